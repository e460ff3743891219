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

Crops are float32 NHWC RGB in [0, 1] inside JAX code, uint8 on the host.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import losses, models, weights
from jaxcloak.faces import io as photo_io
from jaxcloak.faces.align import align
from jaxcloak.faces.detect import Detector
from jaxcloak.files import atomic_write
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES

# Folders are padded to multiples of this before the warp, so photos of many
# sizes share a few compiles (zero padding reads as the warp's zero border).
_PAD = 128
_STAT_KEYS = ("mean", "var")  # BatchNorm running statistics stay frozen


class DataError(ValueError):
  """A data folder a person can fix (missing, empty, no identities)."""


@dataclasses.dataclass(frozen=True)
class RobustConfig:
  epsilon: float = 4 / 255  # L-inf radius of the training attack, in [0, 1] pixels
  pgd_steps: int = 3
  epochs: int = 1
  batch_size: int = 32
  learning_rate: float = 5e-5  # backbone; the head learns 50x faster
  clean_weight: float = 0.5  # loss share of the clean crops (0 = adversarial only)
  scale: float = 32.0  # CosFace s
  margin: float = 0.2  # CosFace m
  flip: bool = True  # random horizontal flips of the training crops
  holdout: float = 0.05  # share of identities kept out for the threshold and checks
  eval_steps: int = 10  # PGD steps of the held-out embedding-shift check
  seed: int = 0

  def __post_init__(self):
    if not 0.0 < self.epsilon < 0.5:
      raise ValueError(f"epsilon must be in (0, 0.5) ([0, 1] pixel units), got {self.epsilon}")
    if self.pgd_steps < 1 or self.epochs < 1 or self.batch_size < 1:
      raise ValueError("pgd_steps, epochs and batch_size must be >= 1")
    if not 0.0 <= self.clean_weight < 1.0:
      raise ValueError(f"clean_weight must be in [0, 1), got {self.clean_weight}")
    if not 0.0 <= self.holdout < 0.5:
      raise ValueError(f"holdout must be in [0, 0.5), got {self.holdout}")


# -- data ---------------------------------------------------------------------


def identity_folders(data_dir: Path) -> dict[str, list[Path]]:
  """identity -> its photos (both sorted); raises DataError for an unusable folder."""
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise DataError(f"data folder {data_dir} does not exist (give a folder of identity "
                    f"subfolders, e.g. ../shared/data/pool)")
  out = {}
  for d in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
    photos = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))
    if photos:
      out[d.name] = photos
  if len(out) < 2:
    raise DataError(f"data folder {data_dir} has {len(out)} identity subfolders with photos "
                    f"(need at least 2: <folder>/<identity>/<photo>.jpg)")
  return out


def data_sha256(data_dir: Path, folders: dict[str, list[Path]]) -> str:
  """Content hash of the data: every photo's relative path and bytes, in sorted order."""
  h = hashlib.sha256()
  for photos in folders.values():
    for p in photos:
      h.update(f"{p.relative_to(data_dir).as_posix()}\0{weights.sha256_file(p)}\n".encode())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FaceSet:
  """The largest face of every photo that has one, aligned for one extractor."""
  crops: np.ndarray  # [n, s, s, 3] uint8
  labels: np.ndarray  # [n] int32 index into identities
  identities: tuple[str, ...]
  photos: int  # photos read (n of them had a face)


def detect_landmarks(files: list[Path], detector: Detector, *, cache: Path | None = None,
                     log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
  """([n, 5, 2] landmarks of each photo's largest face, [n] found), cached in `cache`."""
  if cache is not None and cache.exists():
    with np.load(cache) as z:
      return z["landmarks"], z["found"]
  landmarks = np.zeros((len(files), 5, 2), np.float32)
  found = np.zeros(len(files), bool)
  t0 = time.time()
  for start in range(0, len(files), 64):  # bounds decoded-photo memory
    part = files[start:start + 64]
    rgbs, rows = [], []
    for i, p in enumerate(part):
      try:
        rgbs.append(photo_io.decode(p.read_bytes(), name=p.name).rgb)
        rows.append(start + i)
      except photo_io.PhotoError as e:
        log(f"skipped {p}: {e}")
    for row, dets in zip(rows, detector(rgbs)):
      k = dets.largest()
      if k is not None:
        landmarks[row], found[row] = dets.landmarks[k], True
    if start // 64 % 10 == 9:
      log(f"  detected {start + len(part)}/{len(files)} photos ({time.time() - t0:.0f} s)")
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".part.npz")
    np.savez(tmp, landmarks=landmarks, found=found)
    tmp.replace(cache)
  return landmarks, found


@functools.partial(jax.jit, static_argnums=(3,))
def _align_one(image, lm, template, size):
  return align(image[None], lm[None], template, size)[0]


def aligned_crops(files: list[Path], landmarks: np.ndarray, extractor) -> np.ndarray:
  """[n, s, s, 3] uint8 crops, warped as the cloak warps (faces/align.warp_affine)."""
  s = extractor.input_size
  out = np.zeros((len(files), s, s, 3), np.uint8)
  template = jnp.asarray(extractor.template, jnp.float32)
  for i, (p, lm) in enumerate(zip(files, landmarks)):
    rgb = photo_io.decode(p.read_bytes(), name=p.name).rgb
    h, w = rgb.shape[:2]
    padded = np.zeros((-(-h // _PAD) * _PAD, -(-w // _PAD) * _PAD, 3), np.float32)
    padded[:h, :w] = rgb / np.float32(255.0)
    crop = _align_one(padded, jnp.asarray(lm), template, s)
    out[i] = np.clip(np.round(np.asarray(crop) * 255.0), 0, 255).astype(np.uint8)
  return out


def load_faces(data_dir: Path, folders: dict[str, list[Path]], extractor, detector: Detector,
               *, cache: Path | None = None, log: Callable[[str], None] = print) -> FaceSet:
  files = [p for ps in folders.values() for p in ps]
  labels = np.array([k for k, ps in enumerate(folders.values()) for _ in ps], np.int32)
  lms, found = detect_landmarks(files, detector, cache=cache, log=log)
  keep = np.flatnonzero(found)
  crops = aligned_crops([files[i] for i in keep], lms[keep], extractor)
  return FaceSet(crops, labels[keep], tuple(folders), len(files))


def split_identities(faces: FaceSet, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, held-out rows): `fraction` of the identities with >= 2 faces held out."""
  counts = np.bincount(faces.labels, minlength=len(faces.identities))
  eligible = np.flatnonzero(counts >= 2)
  k = int(round(fraction * len(faces.identities)))
  if k < 2 or len(eligible) - k < 2:
    k = 0  # too few for a threshold: the base's is inherited
  held = np.random.default_rng(seed).choice(eligible, k, replace=False) if k else []
  is_held = np.isin(faces.labels, held)
  return np.flatnonzero(~is_held), np.flatnonzero(is_held)


# -- head, loss and attack ---------------------------------------------------------


def cosines(ext, params, x):
  """[b, c] cosine of each crop's unit embedding to each class weight."""
  f = losses.normalize(ext.embed(params["ext"], x))
  w = params["head"]
  return f @ (w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12))


def cosface_loss(cos, y, w, class_mask, *, scale: float, margin: float):
  """Weighted mean CosFace cross-entropy: softmax over s * (cos - m [label]).

  Args:
    cos: [b, c] cosines; y: [b] int labels; w: [b] row weights (0 = padding);
    class_mask: [c] bool, False for padded classes (they can never win).
  """
  logits = scale * (cos - margin * jax.nn.one_hot(y, cos.shape[1]))
  logits = jnp.where(class_mask, logits, -1e9)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-12)


def pgd(key, loss_fn, x, epsilon, steps: int):
  """L-inf PGD (Madry et al. 2018): random start, `steps` signed-gradient ascents of
  `loss_fn` (crops -> scalar), step 2.5 * epsilon / steps; result within epsilon of
  `x` and inside [0, 1]."""
  alpha = 2.5 * epsilon / steps
  delta = jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
  delta = jnp.clip(x + delta, 0.0, 1.0) - x

  def step(delta, _):
    g = jax.grad(lambda d: loss_fn(x + d))(delta)
    delta = jnp.clip(delta + alpha * jnp.sign(g), -epsilon, epsilon)
    return jnp.clip(x + delta, 0.0, 1.0) - x, None

  delta, _ = jax.lax.scan(step, delta, None, length=steps)
  return jax.lax.stop_gradient(x + delta)


class TrainState(NamedTuple):
  params: dict  # {"ext": extractor params, "head": [d, c] class weights}
  opt_state: optax.OptState


def make_optimizer(params, config: RobustConfig, total_steps: int):
  """Adam on the backbone (cosine decay after a short warm-up), 50x on the head;
  BatchNorm running statistics frozen."""
  warmup = max(1, min(100, total_steps // 10))
  sched = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                             max(total_steps, warmup + 1))

  def label(path, _):
    return "freeze" if getattr(path[-1], "key", None) in _STAT_KEYS else "train"

  labels = {"ext": jax.tree_util.tree_map_with_path(label, params["ext"]), "head": "head"}
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.multi_transform({"train": optax.scale_by_adam(), "head": optax.scale_by_adam(),
                             "freeze": optax.set_to_zero()}, labels),
      optax.multi_transform({"train": optax.scale_by_learning_rate(sched),
                             "head": optax.scale_by_learning_rate(
                                 lambda n: 50.0 * sched(n)),
                             "freeze": optax.identity()}, labels))


def make_train_step(ext, optimizer, class_mask: np.ndarray, config: RobustConfig):
  """jit((state, key, x [b, s, s, 3] in [0, 1], y [b], w [b], epsilon)) -> (state, metrics)."""
  mask = jnp.asarray(class_mask)
  loss_of = functools.partial(cosface_loss, class_mask=mask, scale=config.scale,
                              margin=config.margin)
  clean_weight = config.clean_weight

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, key, x, y, w, epsilon):
    adv = pgd(key, lambda xx: loss_of(cosines(ext, state.params, xx), y, w), x, epsilon,
              config.pgd_steps)

    def loss(params):
      cos_adv = cosines(ext, params, adv)
      total = loss_of(cos_adv, y, w)
      metrics = {"adv_acc": jnp.sum((jnp.argmax(jnp.where(mask, cos_adv, -2.0), 1) == y) * w)}
      if clean_weight > 0:
        cos = cosines(ext, params, x)
        total = (1.0 - clean_weight) * total + clean_weight * loss_of(cos, y, w)
        metrics["clean_acc"] = jnp.sum((jnp.argmax(jnp.where(mask, cos, -2.0), 1) == y) * w)
      return total, metrics

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state), {"loss": value, **metrics}

  return step


def make_embed_fn(ext):
  """jit((params, crops [b, s, s, 3] in [0, 1])) -> [b, d] unit embeddings."""
  return jax.jit(lambda params, x: losses.normalize(ext.embed(params, x)))


def make_shift_attack(ext, steps: int):
  """jit((params, key, crops, epsilon)) -> [b] cosine between each crop's clean and
  attacked unit embedding, after L-inf PGD that pushes the embedding away from the
  clean one (the untargeted cloak's objective, Fawkes 1.0)."""

  @jax.jit
  def attack(params, key, x, epsilon):
    clean = jax.lax.stop_gradient(losses.normalize(ext.embed(params, x)))

    def loss(xx):
      return jnp.sum(losses.normalize(ext.embed(params, xx)) * clean)

    adv = pgd(key, lambda xx: -loss(xx), x, epsilon, steps)
    return jnp.sum(losses.normalize(ext.embed(params, adv)) * clean, axis=-1)

  return attack


# -- batches ------------------------------------------------------------------


def _batches(n: int, b: int):
  for start in range(0, n, b):
    yield np.arange(start, min(n, start + b))


def _pad_batch(crops: np.ndarray, rows: np.ndarray, b: int, *, flip=None):
  """Fixed-shape float batch from uint8 crops (padding rows zero); `flip` [len(rows)] bool."""
  x = np.zeros((b,) + crops.shape[1:], np.float32)
  x[:len(rows)] = crops[rows] / np.float32(255.0)
  if flip is not None:
    x[:len(rows)][flip] = x[:len(rows)][flip][:, :, ::-1]
  return x


def embed_all(embed, params, crops: np.ndarray, b: int) -> np.ndarray:
  out = [np.asarray(embed(params, _pad_batch(crops, r, b)))[:len(r)]
         for r in _batches(len(crops), b)]
  return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def shift_cosines(attack, params, crops: np.ndarray, epsilon: float, b: int,
                  seed: int) -> np.ndarray:
  """[n] clean-vs-attacked embedding cosine for every crop (see `make_shift_attack`)."""
  key = jax.random.key(seed)
  out = []
  for k, rows in enumerate(_batches(len(crops), b)):
    cos = attack(params, jax.random.fold_in(key, k), _pad_batch(crops, rows, b),
                 jnp.float32(epsilon))
    out.append(np.asarray(cos)[:len(rows)])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


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


# -- training and writing -------------------------------------------------------------


def _init_head(feats: np.ndarray, labels: np.ndarray, n_classes: int, cols: int) -> np.ndarray:
  """[d, cols] class weights: each identity's normalised clean feature centroid, so the
  adversarial steps refine a working classifier instead of a random one."""
  w = np.zeros((feats.shape[1], cols), np.float32)
  np.add.at(w.T, labels, feats)
  w[:, n_classes:] = 1.0  # padded classes: masked out, any non-zero vector
  return w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)


def fit(ext, crops: np.ndarray, labels: np.ndarray, n_classes: int, config: RobustConfig, *,
        log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
  """PGD adversarial training of `ext` on uint8 crops with dense labels in [0, n_classes).

  Returns:
    (tuned extractor params, one metrics dict per epoch).
  """
  n, b = len(crops), config.batch_size
  cols = -(-n_classes // 16) * 16  # padded class count: fewer distinct compiles
  class_mask = np.arange(cols) < n_classes
  embed = make_embed_fn(ext)
  head = _init_head(embed_all(embed, ext.params, crops, b), labels, n_classes, cols)
  params = {"ext": ext.params, "head": jnp.asarray(head)}
  steps_per_epoch = -(-n // b)
  optimizer = make_optimizer(params, config, steps_per_epoch * config.epochs)
  # Own copies: the step donates its state, and ext.params must survive.
  state = TrainState(jax.tree.map(jnp.array, params), optimizer.init(params))
  step = make_train_step(ext, optimizer, class_mask, config)
  rng = np.random.default_rng(config.seed)
  key = jax.random.key(config.seed)
  eps = jnp.float32(config.epsilon)
  t0, done, history = time.time(), 0, []
  for epoch in range(config.epochs):
    order = rng.permutation(n)
    sums = {"loss": 0.0, "adv_acc": 0.0, "clean_acc": 0.0}
    for k, rows in enumerate(_batches(n, b)):
      idx = order[rows]
      flip = rng.random(len(idx)) < 0.5 if config.flip else None
      x = _pad_batch(crops, idx, b, flip=flip)
      y = np.zeros((b,), np.int32)
      y[:len(idx)] = labels[idx]
      w = (np.arange(b) < len(idx)).astype(np.float32)
      state, m = step(state, jax.random.fold_in(key, epoch * steps_per_epoch + k), x, y, w, eps)
      m = jax.device_get(m)
      sums["loss"] += float(m["loss"]) * len(idx)
      for a in ("adv_acc", "clean_acc"):
        sums[a] += float(m.get(a, 0.0))
      done += 1
      if done == 1 or k % 20 == 19 or k == steps_per_epoch - 1:
        rate = (time.time() - t0) / done
        left = rate * (steps_per_epoch * config.epochs - done)
        log(f"epoch {epoch + 1}/{config.epochs} batch {k + 1}/{steps_per_epoch} "
            f"loss {float(m['loss']):.3f} {rate:.2f} s/batch, {left / 60:.1f} min left")
    history.append({"epoch": epoch + 1, **{a: round(v / n, 4) for a, v in sums.items()}})
    log(f"epoch {epoch + 1}: {json.dumps(history[-1])}")
  return jax.device_get(state.params["ext"]), history


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
