"""Training data of the robust surrogate: `<identity>/<photo>` folders -> aligned face crops.

Each photo's largest YuNet face is warped to the base extractor's template the
way the cloak warps it (faces/align), and a few identities are split off for
the held-out checks (see `jaxcloak.robust`). Crops are uint8 NHWC RGB on the
host; the warp itself runs in JAX on float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import weights
from jaxcloak.faces import io as photo_io
from jaxcloak.faces.align import align
from jaxcloak.faces.detect import Detector
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES

# Folders are padded to multiples of this before the warp, so photos of many
# sizes share a few compiles (zero padding reads as the warp's zero border).
_PAD = 128


class DataError(ValueError):
  """A data folder a person can fix (missing, empty, no identities)."""


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
