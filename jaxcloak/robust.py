"""Robust surrogate: PGD adversarial fine-tuning of a ported extractor on identity folders.

Fawkes' transfer results (Shan et al. 2020, §5.2 and §7) rest on cloaking
with robust feature extractors: models adversarially trained (Madry et al.
2018) so their features move less under small pixel changes, which makes the
perturbations that still move them more transferable. This module makes one
from a ported extractor and a folder of `<identity>/<photo>` subfolders:

  photos -> YuNet (largest face) -> crop aligned to the base's template
  -> cosine-softmax head over the identities on the unit embeddings
     (CosFace, Wang et al. 2018: s * (cos - m at the label))
  -> per batch: L-inf PGD in [0, 1] pixel space maximising that loss,
     then one optax step on the adversarial (and optionally clean) crops.

The whole step (attack and update) is one jitted function; `epsilon` is an
array argument, so no knob but the batch shape and PGD step count compiles.
Everything random comes from `RobustConfig.seed` (host shuffling and flips
from a NumPy generator, PGD starts from a folded JAX key), so a run repeats.

A few identities (`holdout`) are kept out of training; their pairs give the
fine-tuned model's same-person cosine threshold and a before/after check of
how far a feature-space PGD attack moves the embedding.

This module runs the whole fine-tune and writes the variant; the photos-to-crops
step is `robust_data`, the head, attack and training loop `robust_training`.

Crops are float32 NHWC RGB in [0, 1] inside JAX code, uint8 on the host.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxcloak import models, weights
from jaxcloak.faces.detect import Detector
from jaxcloak.files import atomic_write
from jaxcloak.robust_data import (DataError, data_sha256, identity_folders, load_faces,
                                  split_identities)
from jaxcloak.robust_training import (RobustConfig, embed_all, fit, make_embed_fn,
                                      make_shift_attack, shift_cosines)


# -- verification on held-out identities ---------------------------------------------


def pair_scores(feats: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(cosines, same) over every same-identity pair and as many different-identity pairs."""
  i, j = np.triu_indices(len(labels), 1)
  same = labels[i] == labels[j]
  diff = np.flatnonzero(~same)
  pick = np.random.default_rng(seed).choice(diff, min(len(diff), int(same.sum())), replace=False)
  rows = np.r_[np.flatnonzero(same), np.sort(pick)]
  return (feats[i[rows]] * feats[j[rows]]).sum(-1), same[rows]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
  """Cosine threshold (same iff >= t) maximising accuracy on these pairs; (t, accuracy)."""
  order = np.argsort(scores, kind="stable")
  s, y = scores[order], same[order]
  correct = np.r_[0, np.cumsum(~y)] + np.r_[np.cumsum(y[::-1])[::-1], 0]
  cuts = np.r_[s[0] - 1e-6, (s[:-1] + s[1:]) / 2, s[-1] + 1e-6]
  correct = np.where(np.r_[True, s[1:] > s[:-1], True], correct, -1)  # ties: not realisable
  k = int(np.argmax(correct))
  return float(cuts[k]), float(correct[k] / len(s))


# -- the run and its output -------------------------------------------------------------


def train(base: str, data_dir: Path, config: RobustConfig, *, name: str | None = None,
          weights_dir: Path | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] = print) -> dict:
  """Fine-tunes `base` on the identity folders and writes `<name>.safetensors` plus its
  manifest entry (returned). Raises DataError / KeyError / WeightsError on bad input."""
  if base not in models.EXTRACTORS:
    raise KeyError(f"unknown base model '{base}'; known: {', '.join(models.EXTRACTORS)}")
  name = name or f"{base}_robust"
  if name in models.MODULES:
    raise KeyError(f"'{name}' is a ported model's name; choose another --name")
  data_dir = Path(data_dir)
  wdir = Path(weights_dir or weights.default_weights_dir())
  folders = identity_folders(data_dir)
  ext = models.load(base, wdir)
  t0 = time.time()
  data_hash = data_sha256(data_dir, folders)
  detector = Detector(weights_dir=wdir)  # the pipeline's defaults (upscale to 640)
  cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "jaxcloak" / "landmarks"
  log(f"{base}: aligning the largest face of {sum(map(len, folders.values()))} photos of "
      f"{len(folders)} identities in {data_dir}")
  faces = load_faces(data_dir, folders, ext, detector, log=log,
                     cache=cache_dir / f"{data_hash[:24]}-yunet{detector.max_side}.npz")
  prep_s = time.time() - t0
  train_rows, held_rows = split_identities(faces, config.holdout, config.seed)
  ids = np.unique(faces.labels[train_rows])
  if len(ids) < 2:
    raise DataError(f"{data_dir}: faces found for {len(ids)} identities (need at least 2)")
  log(f"{len(faces.crops)} faces in {faces.photos} photos ({prep_s:.0f} s); training on "
      f"{len(train_rows)} faces of {len(ids)} identities, {len(held_rows)} held out")
  t_train = time.time()
  # Dense class indices over the training identities.
  labels = np.searchsorted(ids, faces.labels[train_rows]).astype(np.int32)
  tuned, history = fit(ext, faces.crops[train_rows], labels, len(ids), config, log=log)
  train_s = time.time() - t_train

  checks = held_out_checks(ext, tuned, faces.crops[held_rows], faces.labels[held_rows], config)
  entry = write_variant(
      name, tuned, wdir=wdir, base=base, data_dir=data_dir, data_hash=data_hash,
      config=config, same_person=checks.pop("same_person_cosine", None),
      extra={"identities": len(ids), "faces": len(train_rows), "photos": faces.photos,
             "held_out_identities": int(len(np.unique(faces.labels[held_rows]))),
             "held_out_faces": int(len(held_rows)), "history": history,
             "prepare_seconds": round(prep_s, 1), "train_seconds": round(train_s, 1),
             "seconds_per_epoch": round(train_s / config.epochs, 1), "held_out": checks})
  log(f"{name}: wrote {wdir / entry['output']} ({train_s / 60:.1f} min training)")
  return entry


def held_out_checks(ext, tuned, crops: np.ndarray, labels: np.ndarray,
                    config: RobustConfig) -> dict:
  """Base vs tuned on held-out identities: verification threshold and accuracy, and
  how far PGD at the training epsilon moves each unit embedding (cosine to clean;
  `pgd_fooled`: the share pushed below the model's own same-person threshold)."""
  if len(crops) == 0:
    return {}
  b = config.batch_size
  embed, attack = make_embed_fn(ext), make_shift_attack(ext, config.eval_steps)
  out: dict = {}
  for tag, p in (("base", ext.params), ("tuned", tuned)):
    scores, same = pair_scores(embed_all(embed, p, crops, b), labels, config.seed)
    t, acc = best_threshold(scores, same)
    cos = shift_cosines(attack, p, crops, config.epsilon, b, config.seed)
    # The shift in units of the model's own same-person distance: comparable across
    # models whose embeddings spread differently (fine-tuning moves the threshold).
    shift = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0)).mean() / np.sqrt(2.0 - 2.0 * t)
    out[tag] = {"threshold": round(t, 4), "accuracy": round(acc, 4), "pairs": int(len(same)),
                "pgd_cosine_mean": round(float(cos.mean()), 4),
                "pgd_fooled": round(float((cos < t).mean()), 4),
                "pgd_shift_rel": round(float(shift), 4)}
  out["same_person_cosine"] = out["tuned"]["threshold"]
  return out


def write_variant(name: str, params, *, wdir: Path, base: str, data_dir: Path, data_hash: str,
                  config: RobustConfig, same_person: float | None, extra: dict) -> dict:
  """Writes `<name>.safetensors` (the base's key layout) and its manifest entry."""
  base_entry = weights.read_manifest(wdir).get(base, {})
  out = wdir / f"{name}.safetensors"
  arrays = weights.flatten(params)
  weights.save_safetensors(out, arrays)
  base_ext = models.module(base)
  entry = {
      "base": base,
      "kind": "robust",
      # The file fine-tuned from (the converted base weights) and its upstream source.
      "source_sha256": base_entry.get("output_sha256"),
      "base_source_sha256": base_entry.get("source_sha256"),
      "data": str(Path(data_dir).resolve()),
      "data_sha256": data_hash,
      "epsilon": config.epsilon,
      "steps": config.pgd_steps,
      "epochs": config.epochs,
      "seed": config.seed,
      "config": dataclasses.asdict(config),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "output": out.name,
      "output_sha256": weights.sha256_file(out),
      "num_params": int(sum(v.size for v in arrays.values())),
      "license": f"derived from {base}: {base_entry.get('license', base_ext.SOURCE.license)}",
      "same_person_cosine": same_person,
      "same_person_source": ("held-out identities of the training data (best-accuracy cut)"
                             if same_person is not None else f"inherited from {base}"),
      **extra,
  }
  manifest = weights.read_manifest(wdir)
  manifest[name] = entry
  atomic_write(wdir / weights.MANIFEST,
               (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
  return entry
