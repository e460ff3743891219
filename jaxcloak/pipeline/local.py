"""`jaxcloak cloak`: cloak a set of photos into an output folder with a JSONL report.

Photos are grouped by user (an explicit id, else each photo's parent folder).
Targeted mode picks one target per user from a pool of identity folders, whose
features are computed once and cached.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcloak import targets as targets_lib
from jaxcloak.faces import io as photo_io
from jaxcloak.files import atomic_write, permission_bits
from jaxcloak.faces import regions as regions_lib
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES, Cloaker, Item

TARGET_SAMPLE = 64  # photos per user used to choose the target


def collect_photos(inputs: Sequence[Path], *, user: str | None = None) -> list[tuple[Path, str, str]]:
  """(source path, relative output name, user) for every image file under the inputs."""
  out = []
  for root in map(Path, inputs):
    if root.is_file():
      out.append((root, root.name, user or root.parent.name))
      continue
    if not root.is_dir():
      raise FileNotFoundError(f"{root}: no such file or folder")
    for p in sorted(root.rglob("*")):
      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
        rel = p.relative_to(root)
        who = user or (rel.parts[0] if len(rel.parts) > 1 else root.name)
        out.append((p, str(rel), who))
  return out


def _pool_key(pool_dir: Path, files: list[Path], extractors: Sequence[str],
              upscale: bool) -> str:
  h = hashlib.sha256()
  h.update(("|".join(extractors) + f"|upscale={upscale}|v1").encode())
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


def _face_record(f, target_feats, orig_feats, written_feats, extractors) -> dict:
  """One face's report: box, status, loop stats, and per model on the written file
  its feature moves and whether that model still matches the face to the original."""
  rec = {"box": [round(v, 1) for v in f.box], "score": round(f.score, 4), "status": f.status}
  if f.region is not None:
    rec["region"] = list(f.region.box)
  rec.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in f.stats.items()})
  if orig_feats is not None and written_feats is not None:
    shift = {}
    for e in extractors:
      o, w = orig_feats[e.name], written_feats[e.name]
      s = {"self_distance": float(np.linalg.norm(w - o))}
      if target_feats is not None:
        t = target_feats[e.name]
        s["target_distance_before"] = float(np.linalg.norm(o - t))
        s["target_distance_after"] = float(np.linalg.norm(w - t))
      shift[e.name] = {k: round(v, 5) for k, v in s.items()}
      # Fooled: the model no longer takes the cloaked face for the original.
      shift[e.name]["fooled"] = bool(s["self_distance"] > e.same_person_distance)
    rec["features"] = shift
  return rec


def cloak_photos(cloaker: Cloaker, photos: Sequence[tuple[Path, str, str]], out_dir: Path, *,
                 pool: targets_lib.IdentityFeatures | None = None,
                 report: Path | None = None, chunk: int = 32,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
  """Cloaks photos into out_dir (same relative names); returns a summary.

  Every input gets exactly one JSONL report line and one output file: the
  cloaked photo, or an exact copy of the input when nothing could be cloaked.
  """
  from tqdm import tqdm

  config = cloaker.config
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = Path(report) if report else out_dir / "report.jsonl"
  targeted = config.mode == "targeted"
  if targeted and pool is None:
    raise ValueError("targeted mode needs a target pool (--pool DIR of identity folders); "
                     "use --mode untargeted to cloak without one")
  users: dict[str, list] = {}
  for p in photos:
    users.setdefault(p[2], []).append(p)
  counts: dict[str, int] = {}
  dssims: list[float] = []
  n_faces = 0
  t_start = time.time()
  bar = tqdm(total=len(photos), unit="photo", disable=not progress, file=sys.stderr)
  with open(report, "a") as rep:
    for user, user_photos in users.items():
      target = None
      for start in range(0, len(user_photos), chunk):
        part = user_photos[start:start + chunk]
        t0 = time.time()
        items = [Item(rel, src.read_bytes(), user) for src, rel, _ in part]
        sources = {rel: permission_bits(src.stat().st_mode) for src, rel, _ in part}
        for it in items:
          cloaker.decode(it)
        cloaker.detect(items)
        cloaker.make_regions(items)
        if targeted and target is None:
          # One target per user, from (up to TARGET_SAMPLE of) the user's photos.
          sample = items
          if len(items) < TARGET_SAMPLE and len(user_photos) > len(items):
            extra = [Item(r, s.read_bytes(), user) for s, r, _ in user_photos[len(items):TARGET_SAMPLE]]
            for it in extra:
              cloaker.decode(it)
            cloaker.detect(extra)
            sample = items + extra
          feats = cloaker.identity_features([it for it in sample if it.faces])
          if len(next(iter(feats.values()))):
            target = targets_lib.choose_target(
                feats, pool, extractors=config.extractors, weights=config.weights,
                choice=config.target_choice, top_k=config.target_top_k, seed=config.seed,
                exclude=(user,))
        faces = [f for it in items for f in it.faces]
        tfeats = {id(f): target.features for f in faces} if target else {}
        if targeted and target is None:
          for f in faces:
            f.status = "no_target"
        cloaker.cloak_items(items, tfeats)
        # Feature shift measured on the written, re-decoded files.
        done = [(it, f) for it in items if it.status == "cloaked" for f in it.faces
                if f.status == "cloaked"]
        orig = cloaker.region_features([f.region for _, f in done])
        written = cloaker.region_features(
            [regions_lib.recut(f.region, it.written_rgb) for it, f in done])
        per_face = {id(f): i for i, (_, f) in enumerate(done)}
        elapsed = (time.time() - t0) / max(1, len(items))
        for it in items:
          out_name = it.name
          if it.output is None:
            data = it.data  # exact copy: never a damaged or partial photo
            if it.status == "pending":
              it.status = "no_face"
          else:
            data = it.output
            out_name = photo_io.output_name(out_name, it.output_format)
          atomic_write(out_dir / out_name, data, sources[it.name])
          faces_rec = []
          for f in it.faces:
            i = per_face.get(id(f))
            of = {e: orig[e][i] for e in orig} if i is not None else None
            wf = {e: written[e][i] for e in written} if i is not None else None
            faces_rec.append(_face_record(f, target.features if target else None, of, wf,
                                          cloaker.extractors))
            if f.status == "cloaked" and "dssim" in f.stats:
              dssims.append(f.stats["dssim"])
          n_faces += len(it.faces)
          counts[it.status] = counts.get(it.status, 0) + 1
          rec = {"input": it.name, "output": out_name, "user": user, "status": it.status,
                 "message": it.message or None, "faces": faces_rec,
                 "notes": it.photo.notes if it.photo else [],
                 "target": target.name if target else None,
                 "mode": config.mode, "budget": config.budget,
                 "seconds": round(elapsed, 3)}
          rep.write(json.dumps(rec) + "\n")
          rep.flush()
          if it.message and it.status != "cloaked":
            bar.write(it.message) if progress else log(it.message)
        bar.update(len(items))
  bar.close()
  seconds = time.time() - t_start
  return {"photos": len(photos), "by_status": counts, "faces": n_faces,
          "faces_cloaked": len(dssims),
          "mean_dssim": float(np.mean(dssims)) if dssims else None,
          "max_dssim": float(np.max(dssims)) if dssims else None,
          "seconds": round(seconds, 2), "report": str(report)}
