"""The target pool: unit features of a few main faces per identity, cached on disk.

Target choice needs an identity's centroid, not every photo of it: the first
`PHOTOS_PER_IDENTITY` photos (in name order) are read. Their detections are
cached once per pool (keyed by its files and the detector setting), and each
model's features apart (keyed by that and the model), so a preset that adds a
model computes only that model's features, and never detects again.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxcloak import targets as targets_lib
from jaxcloak.faces import regions as regions_lib
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES, Cloaker
from jaxcloak.pipeline.records import Item

PHOTOS_PER_IDENTITY = 4  # what a centroid needs; LFW-style pools hold ~5 per identity
CHUNK = 64  # photos decoded and detected at once (memory)


def _pool_key(pool_dir: Path, files: list[Path], detector: str) -> str:
  h = hashlib.sha256()
  h.update(f"{detector}|per_identity={PHOTOS_PER_IDENTITY}|v3".encode())
  for f in files:
    st = f.stat()
    h.update(f"{f.relative_to(pool_dir)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:24]


def pool_features(cloaker: Cloaker, pool_dir: Path, *, cache_dir: Path | None = None,
                  log: Callable[[str], None] = print) -> targets_lib.IdentityFeatures:
  """Unit features of each identity's main faces, for the cloaker's extractors."""
  pool_dir = Path(pool_dir)
  ids = sorted(d for d in pool_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
  if not ids:
    raise ValueError(f"target pool {pool_dir} has no identity subfolders")
  files = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                          and not p.name.startswith("."))[:PHOTOS_PER_IDENTITY] for d in ids}
  names = list(files)
  flat = [(k, p) for k, n in enumerate(names) for p in files[n]]
  # The detections depend on how the detector runs: its upscaling and its largest side.
  detector = f"upscale={cloaker.detector.upscale}|side={cloaker.detector.max_side}"
  key = _pool_key(pool_dir, [p for _, p in flat], detector)
  cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "jaxcloak" / "pools"
  faces = _cached(cache_dir / f"{key}.faces.npz", lambda: _detect(cloaker, flat, names, log))
  paths = {e.name: cache_dir / f"{key}.{e.name}.npz" for e in cloaker.extractors}
  # One pass embeds every model (region_features runs them all); only missing caches are written.
  computed = {} if all(p.exists() for p in paths.values()) else \
      _embed(cloaker, [p for _, p in flat], faces, log)
  feats = {name: _cached(path, lambda name=name: {"features": computed[name]})["features"]
           for name, path in paths.items()}
  owners = faces["owners"]
  return targets_lib.IdentityFeatures(
      names, {e: [f[owners == k] for k in range(len(names))] for e, f in feats.items()})


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
  if path.exists():
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  arrays = compute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".part.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)
  return arrays


def _detect(cloaker: Cloaker, flat, names, log) -> dict:
  """Each photo's main face: owner identity index (-1 = none) and its landmarks."""
  t0 = time.perf_counter()
  log(f"target pool: detecting faces in {len(flat)} photos of {len(names)} identities "
      f"(up to {PHOTOS_PER_IDENTITY} each; cached after)")
  owners = np.full(len(flat), -1, np.int32)
  landmarks = np.zeros((len(flat), 5, 2), np.float32)
  for start in range(0, len(flat), CHUNK):
    items = [Item(p.name, p.read_bytes()) for _, p in flat[start:start + CHUNK]]
    for it in items:
      cloaker.decode(it)
    cloaker.detect(items)
    for j, it in enumerate(items):
      if it.faces:
        owners[start + j] = flat[start + j][0]
        landmarks[start + j] = it.main_face().landmarks
  log(f"target pool: detected in {time.perf_counter() - t0:.1f} s")
  return {"owners": owners, "landmarks": landmarks}


def _embed(cloaker: Cloaker, paths, faces, log) -> dict[str, np.ndarray]:
  """Model -> [n_photos, d] unit features of each photo's main face (0 where none)."""
  t0 = time.perf_counter()
  out = {e.name: np.zeros((len(paths), e.embedding_dim), np.float32) for e in cloaker.extractors}
  found = np.flatnonzero(faces["owners"] >= 0)
  for start in range(0, len(found), CHUNK):
    rows = found[start:start + CHUNK]
    regions = []
    for i in rows:
      it = Item(paths[i].name, paths[i].read_bytes())
      cloaker.decode(it)
      regions.append(regions_lib.face_region(it.photo.rgb, faces["landmarks"][i],
                                             cloaker.extractors,
                                             max_region=cloaker.config.max_region))
    for name, f in cloaker.region_features(regions).items():
      out[name][rows] = f
  log(f"target pool: features of {len(found)} faces ({', '.join(out)}) in "
      f"{time.perf_counter() - t0:.1f} s")
  return out
