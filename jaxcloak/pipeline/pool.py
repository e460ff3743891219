"""The target pool: unit features of every identity's main faces, cached on disk
(keyed by the pool's files, the extractors and the detector setting)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcloak import targets as targets_lib
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES, Cloaker
from jaxcloak.pipeline.records import Item


def _pool_key(pool_dir: Path, files: list[Path], extractors: Sequence[str],
              upscale: bool) -> str:
  h = hashlib.sha256()
  h.update(("|".join(extractors) + f"|upscale={upscale}|v2").encode())
  for f in files:
    st = f.stat()
    h.update(f"{f.relative_to(pool_dir)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:24]


def pool_features(cloaker: Cloaker, pool_dir: Path, *, cache_dir: Path | None = None,
                  log: Callable[[str], None] = print) -> targets_lib.IdentityFeatures:
  """Unit features of every identity's main faces in a pool, cached on disk."""
  pool_dir = Path(pool_dir)
  ids = sorted(d for d in pool_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
  if not ids:
    raise ValueError(f"target pool {pool_dir} has no identity subfolders")
  files = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
           for d in ids}
  names = list(files)
  key = _pool_key(pool_dir, [f for n in names for f in files[n]], cloaker.config.extractors,
                  cloaker.config.detect_upscale)
  cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "jaxcloak" / "pools"
  cache = cache_dir / f"{key}.npz"
  if cache.exists():
    return targets_lib.IdentityFeatures.load(cache)
  log(f"computing target-pool features for {len(names)} identities in {pool_dir} (cached after)")
  # Batch across identities: pools are many small folders.
  flat = [(k, p) for k, n in enumerate(names) for p in files[n]]
  per_id = {e: [[] for _ in names] for e in cloaker.config.extractors}
  for start in range(0, len(flat), 64):
    part = flat[start:start + 64]
    items = [Item(p.name, p.read_bytes()) for _, p in part]
    for it in items:
      cloaker.decode(it)
    cloaker.detect(items)
    owners = [k for (k, _), it in zip(part, items) if it.faces]
    f = cloaker.identity_features([it for it in items if it.faces])
    for e in per_id:
      for k, v in zip(owners, f[e]):
        per_id[e][k].append(v)
  dim = {e.name: e.embedding_dim for e in cloaker.extractors}
  feats = {e: [np.stack(v) if v else np.zeros((0, dim[e]), np.float32) for v in per_id[e]]
           for e in per_id}
  result = targets_lib.IdentityFeatures(names, feats)
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_suffix(".part.npz")
  result.save(tmp)
  tmp.replace(cache)
  return result
