"""Face-verification accuracy of each ported extractor on ../shared/data/faces, YuNet-aligned.

  .venv/bin/python benchmarks/verification.py [--models dlib facenet sface faceres mobileface]
      [--same 1500] [--different 1500] [--per-identity 20] [--seed 0]
      [--max-side 640] [--upscale] [--batch-size 32] [--all-images]

Pairs: `--per-identity` photos are drawn (seeded) from each of the 41
identities, so George_W_Bush's 530 photos do not swamp the rest; `--same`
same-identity pairs are spread evenly over identities and `--different`
pairs take two distinct identities uniformly at random (no pair repeats).
The pairs are split in two halves (seeded, same and different split
separately so both halves are balanced). 2-fold protocol: the cosine
threshold that maximises accuracy on one half is applied to the other; the
figure is the mean of the two held-out accuracies. AUC is over all pairs.

Pipeline, as the cloaker runs it: each needed photo is decoded once; YuNet
(`Detector` with the pipeline's defaults unless `--max-side`/`--upscale`)
finds faces; the labelled face is the one whose box centre is nearest the
photo centre, within 40 px. Its 5 landmarks are mapped to `extractor.template` with
`similarity_transform`, the crop is warped with `warp_affine` at
`extractor.input_size`, embedded with `extractor.embed`, L2-normalised;
a pair's score is the cosine of its two embeddings (`l2_*` fields repeat
the protocol with the raw embeddings' Euclidean distance, dlib's own metric).
One jitted function per model (fixed batch, last batch padded).

A photo without a central detection makes each of its pairs a failure. Such a
pair is counted as an error in `accuracy` (the headline figure, honest about
detection) and left out of `accuracy_detected`, the threshold choice and AUC.

Writes one JSON line per model and one for detection. Timings include
compilation and are on a shared machine: treat them as rough.

Last seen 2026-11-27 (2 shared CPU cores, other jobs running; jax 0.10.2),
defaults (3,000 pairs over 819 photos, seed 0; full table in
docs/verification.md). Accuracy (2-fold, failures as errors) / on detected
pairs / AUC:
  pipeline detector (native 250 px), 64 failed pairs, 356 s with --all-images:
    dlib 0.9667 / 0.9877 / 0.99907, facenet 0.9710 / 0.9922 / 0.99966,
    sface 0.9767 / 0.9980 / 0.99998; detection 811/819, 2,050/2,068.
  --upscale (to 640), 31 failed pairs, 443 s:
    dlib 0.9790 / 0.9892 / 0.99950, facenet 0.9833 / 0.9936 / 0.99975,
    sface 0.9890 / 0.9993 / 0.99999; detection 815/819.
  2026-12-01, default detector (now the enlarged one: 815/819, 31 failed
  pairs), `--models faceres mobileface`, 176 s:
    faceres 0.8937 / 0.9030 / 0.97260, mobileface 0.9223 / 0.9320 / 0.98055.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcloak import models  # noqa: E402
from jaxcloak.faces.align import similarity_transform, warp_affine  # noqa: E402
from jaxcloak.faces.detect import MAX_SIDE, Detector  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
MAX_DISTANCE = 40.0  # px from the photo centre to the labelled face's box centre


# -- Pairs -------------------------------------------------------------------

def list_identities(root: Path) -> dict[str, list[Path]]:
  """Identity -> its photos, both sorted, so sampling depends only on the seed."""
  return {d.name: sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
          for d in sorted(root.iterdir()) if d.is_dir()}


def sample_pairs(by_identity: dict[str, list[Path]], *, n_same: int, n_different: int,
                 per_identity: int, seed: int):
  """Seeded, identity-balanced verification pairs.

  Args:
    by_identity: identity -> photo paths.
    n_same: same-identity pairs, spread as evenly as possible over identities.
    n_different: pairs of two distinct identities (uniform over identity pairs).
    per_identity: at most this many photos per identity are used.
    seed: seeds every random choice.

  Returns:
    (files [m], pairs [n, 2] int indices into files, same [n] bool,
    half [n] int in {0, 1}).
  """
  rng = np.random.default_rng(seed)
  names = list(by_identity)
  chosen = {}
  for name in names:
    photos = by_identity[name]
    k = min(per_identity, len(photos))
    chosen[name] = [photos[i] for i in sorted(rng.choice(len(photos), k, replace=False))]
  files = [p for name in names for p in chosen[name]]
  index = {p: i for i, p in enumerate(files)}

  same: list[tuple[int, int]] = []
  quota = np.full(len(names), n_same // len(names))
  quota[rng.permutation(len(names))[:n_same % len(names)]] += 1
  for name, q in zip(names, quota):
    combos = list(itertools.combinations(chosen[name], 2))
    if q > len(combos):
      raise ValueError(f"{name}: {q} same pairs asked, only {len(combos)} possible")
    for j in rng.choice(len(combos), q, replace=False):
      a, b = combos[j]
      same.append((index[a], index[b]))

  different: set[tuple[int, int]] = set()
  while len(different) < n_different:
    i, j = rng.choice(len(names), 2, replace=False)
    a = index[chosen[names[i]][rng.integers(len(chosen[names[i]]))]]
    b = index[chosen[names[j]][rng.integers(len(chosen[names[j]]))]]
    different.add((min(a, b), max(a, b)))
  different_list = sorted(different)
  rng.shuffle(different_list)

  pairs = np.array(same + different_list, np.int64)
  is_same = np.r_[np.ones(len(same), bool), np.zeros(len(different_list), bool)]
  half = np.zeros(len(pairs), np.int64)
  for group in (np.flatnonzero(is_same), np.flatnonzero(~is_same)):
    half[rng.permutation(group)[len(group) // 2:]] = 1
  return files, pairs, is_same, half


# -- Metrics -----------------------------------------------------------------

def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
  """Threshold t (same iff score >= t) maximising accuracy; returns (t, accuracy)."""
  order = np.argsort(scores, kind="stable")
  s, y = scores[order], same[order]
  # Cutting before position i calls s[i:] same: correct = different below + same at/above.
  diff_below = np.r_[0, np.cumsum(~y)]
  same_above = np.r_[np.cumsum(y[::-1])[::-1], 0]
  correct = diff_below + same_above
  cuts = np.r_[s[0] - 1e-6, (s[:-1] + s[1:]) / 2, s[-1] + 1e-6]
  # Ties: a cut between equal scores is not realisable; give it no advantage.
  valid = np.r_[True, s[1:] > s[:-1], True]
  correct = np.where(valid, correct, -1)
  i = int(np.argmax(correct))
  return float(cuts[i]), float(correct[i] / len(s))


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
  from scipy.stats import rankdata
  ranks = rankdata(scores)
  n_pos, n_neg = int(same.sum()), int((~same).sum())
  return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def two_fold(scores: np.ndarray, same: np.ndarray, half: np.ndarray, ok: np.ndarray) -> dict:
  """2-fold accuracy: threshold from one half's detected pairs, scored on the other half.

  Failed pairs (`~ok`) count as errors in `accuracy` and are left out of
  `accuracy_detected`.
  """
  folds = []
  for test in (0, 1):
    fit = (half != test) & ok
    t, _ = best_threshold(scores[fit], same[fit])
    held = half == test
    right = ((scores >= t) == same) & ok
    folds.append({"threshold": t, "accuracy": right[held].sum() / held.sum(),
                  "accuracy_detected": right[held & ok].sum() / max(1, (held & ok).sum())})
  return {
      "accuracy": float(np.mean([f["accuracy"] for f in folds])),
      "accuracy_detected": float(np.mean([f["accuracy_detected"] for f in folds])),
      "folds": [{k: round(float(v), 5) for k, v in f.items()} for f in folds],
      "threshold": float(np.mean([f["threshold"] for f in folds])),
      "auc": roc_auc(scores[ok], same[ok]),
      "same_cos": float(scores[same & ok].mean()),
      "different_cos": float(scores[~same & ok].mean()),
  }


# -- Pipeline ----------------------------------------------------------------

def decode(files) -> np.ndarray:
  """[m, h, w, 3] uint8 RGB; every photo here is 250x250."""
  return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def central_landmarks(det: Detector, photos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Landmarks of the labelled (central) face per photo: ([m, 5, 2], found [m] bool)."""
  landmarks = np.zeros((len(photos), 5, 2), np.float32)
  found = np.zeros(len(photos), bool)
  centre = (photos.shape[2] / 2.0, photos.shape[1] / 2.0)
  for i, d in enumerate(det(list(photos))):
    j = d.nearest(centre, MAX_DISTANCE)
    if j is not None:
      landmarks[i], found[i] = d.landmarks[j], True
  return landmarks, found


def make_embed_fn(extractor):
  """jit((params, photos [b, h, w, 3] in [0, 1], affines [b, 2, 3])) -> [b, d] raw embeddings."""
  size = extractor.input_size

  def fn(params, photos, affines):
    crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(photos, affines, size)
    return extractor.embed(params, crops)

  return jax.jit(fn)


def embed_all(extractor, photos: np.ndarray, landmarks: np.ndarray, found: np.ndarray,
              batch_size: int) -> tuple[np.ndarray, float]:
  """Raw embeddings of every photo's central face (zeros where none); returns (emb, compile_s)."""
  fn = make_embed_fn(extractor)
  idx = np.flatnonzero(found)
  affines = np.stack([similarity_transform(landmarks[i], extractor.template) for i in idx])
  out = np.zeros((len(photos), extractor.embedding_dim), np.float32)
  compile_s = 0.0
  for start in range(0, len(idx), batch_size):
    chunk = idx[start:start + batch_size]
    pad = batch_size - len(chunk)
    x = np.concatenate([photos[chunk], np.repeat(photos[chunk[:1]], pad, 0)])
    m = np.concatenate([affines[start:start + len(chunk)],
                        np.repeat(affines[start:start + 1], pad, 0)])
    t = time.perf_counter()
    e = fn(extractor.params, jnp.asarray(x, jnp.float32) / 255.0, jnp.asarray(m, jnp.float32))
    e = np.asarray(jax.block_until_ready(e))
    if start == 0:
      compile_s = time.perf_counter() - t  # first call compiles (and runs one batch)
    out[chunk] = e[:len(chunk)]
  return out, compile_s


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=list(models.EXTRACTORS))
  ap.add_argument("--same", type=int, default=1500)
  ap.add_argument("--different", type=int, default=1500)
  ap.add_argument("--per-identity", type=int, default=20)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--max-side", type=int, default=MAX_SIDE, help="0 = native size (pad only)")
  ap.add_argument("--upscale", action="store_true",
                  help="let the detector enlarge photos smaller than --max-side (found more "
                       "faces when it was the default)")
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--all-images", action="store_true",
                  help="also report the detection rate over every photo in the folder")
  ap.add_argument("--faces", type=Path, default=FACES)
  args = ap.parse_args()
  versions = {"device": str(jax.devices()[0]), "jax": jax.__version__,
              "python": platform.python_version()}

  by_identity = list_identities(args.faces)
  files, pairs, same, half = sample_pairs(by_identity, n_same=args.same,
                                          n_different=args.different,
                                          per_identity=args.per_identity, seed=args.seed)
  used = np.unique(pairs)
  files = [files[i] for i in used]
  pairs = np.searchsorted(used, pairs)

  t = time.perf_counter()
  photos = decode(files)
  # `upscale` is passed only when asked, so the script runs on detectors without the knob.
  det = Detector(max_side=args.max_side or None, **({"upscale": True} if args.upscale else {}))
  landmarks, found = central_landmarks(det, photos)
  detect_s = time.perf_counter() - t
  ok = found[pairs].all(axis=1)
  record = {"benchmark": "yunet_central_detection", "photos": len(files),
            "detected": int(found.sum()), "rate": round(float(found.mean()), 5),
            "missed": [f"{f.parent.name}/{f.name}" for f, k in zip(files, found) if not k],
            "max_side": args.max_side or None, "upscale": args.upscale,
            "seconds": round(detect_s, 1)}
  if args.all_images:
    every = [p for ps in by_identity.values() for p in ps]
    t = time.perf_counter()
    _, found_all = central_landmarks(det, decode(every))
    record.update({"all_photos": len(every), "all_detected": int(found_all.sum()),
                   "all_rate": round(float(found_all.mean()), 5),
                   "all_seconds": round(time.perf_counter() - t, 1)})
  print(json.dumps(record | versions), flush=True)

  for name in args.models:
    extractor = models.load(name)
    t = time.perf_counter()
    emb, compile_s = embed_all(extractor, photos, landmarks, found, args.batch_size)
    seconds = time.perf_counter() - t
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    scores = (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(-1)
    result = two_fold(scores, same, half, ok)
    # The raw Euclidean distance is dlib's own metric (same person below 0.6);
    # reported for every model as a cross-check of the cosine figures.
    l2 = two_fold(-np.linalg.norm(emb[pairs[:, 0]] - emb[pairs[:, 1]], axis=-1), same, half, ok)
    result.update({"l2_accuracy": l2["accuracy"], "l2_auc": l2["auc"],
                   "l2_threshold": -l2["threshold"]})
    record = {"benchmark": "verification", "model": name, "input_size": extractor.input_size,
              "pairs": len(pairs), "same_pairs": int(same.sum()),
              "different_pairs": int((~same).sum()), "photos": len(files),
              "identities": len(by_identity), "failed_pairs": int((~ok).sum()),
              **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()},
              "seconds": round(seconds, 1), "compile_s": round(compile_s, 1),
              "seed": args.seed, "max_side": args.max_side or None, "upscale": args.upscale}
    print(json.dumps(record | versions), flush=True)


if __name__ == "__main__":
  main()
