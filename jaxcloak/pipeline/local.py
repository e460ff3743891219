"""`jaxcloak cloak`: cloak a set of photos into an output folder with a JSONL report.

Photos are grouped by user (an explicit id, else each photo's parent folder).
Targeted mode picks one target per user from a pool of identity folders, whose
features are computed once and cached.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from jaxcloak import persons as persons_lib
from jaxcloak import targets as targets_lib
from jaxcloak.files import atomic_write, permission_bits
from jaxcloak.faces import regions as regions_lib
from jaxcloak.paths import output_file
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES, Cloaker
from jaxcloak.pipeline.destination import META_DIR
from jaxcloak.pipeline.job import Options, Tally, chunked
from jaxcloak.pipeline.pool import pool_features  # noqa: F401 (its old home; still imported from here)
from jaxcloak.pipeline.records import Item, Task

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
                 report: Path | None = None, chunk: int = 32, max_faces: int = stages.MAX_FACES,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
  """Cloaks photos into out_dir (same relative names); returns a summary.

  Every input gets exactly one JSONL report line and one output file: the
  cloaked photo, or an exact copy of the input when nothing could be cloaked.
  Photos are read and chunked as a migration's (`job.chunked`: at most `chunk`
  photos, and a bounded number of bytes and pixels, at a time).
  """
  from tqdm import tqdm

  config = cloaker.config
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = Path(report) if report else out_dir / "report.jsonl"
  if config.mode == "targeted" and pool is None:
    raise ValueError("targeted mode needs a target pool (--pool DIR of identity folders); "
                     "use --mode untargeted to cloak without one")
  users: dict[str, list] = {}
  for p in photos:
    users.setdefault(p[2], []).append(p)
  # Chunks run across users (each face is optimised toward its own user's target),
  # so the compiled batches fill up: per user, a user's last batch would be mostly
  # padding, which the loop computes like a face.
  ordered = [p for user_photos in users.values() for p in user_photos]
  targets: dict[str, targets_lib.Target] = {}
  # scope="person": each person's cloak is kept beside the outputs for later batches.
  book = persons_lib.folder_book(config, cloaker.extractors, out_dir / META_DIR) \
      if config.scope == "person" else None
  tally, t_start, start = Tally(), time.time(), 0
  bar = tqdm(total=len(photos), unit="photo", disable=not progress, file=sys.stderr)
  with open(report, "a") as rep:
    for tasks in chunked(_read(ordered), Options(chunk=chunk)):
      part, start = ordered[start:start + len(tasks)], start + len(tasks)
      t0 = time.time()
      items = [Item(t.rel, t.data, t.user) for t in tasks]
      live = stages.decode(cloaker, items)
      stages.detect(cloaker, live, max_faces=max_faces)
      if config.mode == "targeted" and book is None:  # a person has their own (stages.cloak)
        _choose_targets(cloaker, part, live, users, targets, pool)
      stages.cloak(cloaker, live, targets, pool=pool, book=book)
      shift = _feature_shift(cloaker, items)
      seconds = (time.time() - t0) / max(1, len(items))
      for (src, _, _), it in zip(part, items):
        _write(out_dir, it, src)
        rep.write(json.dumps(_report_line(cloaker, it, targets.get(it.user), shift, seconds))
                  + "\n")
        rep.flush()
        tally.add(it.status, len(it.faces), [f.stats["dssim"] for f in it.faces
                                             if f.status == "cloaked" and "dssim" in f.stats])
        if it.message and it.status != "cloaked":
          bar.write(it.message) if progress else log(it.message)
      bar.update(len(items))
  bar.close()
  if book is not None:
    _every_user_has_a_person(book, users, report)
  return {"photos": len(photos), **tally.summary(),
          "max_dssim": float(np.max(tally.dssims)) if tally.dssims else None,
          "seconds": round(time.time() - t_start, 2), "report": str(report)}


def _read(photos: Sequence[tuple[Path, str, str]]) -> Iterator[Task]:
  """Each photo's bytes, read only as `chunked` asks for them (a chunk's worth at a time)."""
  for src, rel, who in photos:
    data = src.read_bytes()
    yield Task(rel, who, len(data), None, data)


def _choose_targets(cloaker: Cloaker, part, live: Sequence[Item], users: dict,
                    targets: dict, pool: targets_lib.IdentityFeatures) -> None:
  """One target per user first met in this chunk, from up to TARGET_SAMPLE of the
  user's photos from here on (read again: the chunk holds only its own)."""
  new_users = [u for u in dict.fromkeys(who for _, _, who in part) if u not in targets]
  if not new_users:
    return
  sample = [it for it in live if it.user in new_users]
  more = []
  for u in new_users:
    mine = [q for q in part if q[2] == u]
    first = users[u].index(mine[0])
    ahead = users[u][first + len(mine):first + TARGET_SAMPLE]
    more += [Item(r, src.read_bytes(), u) for src, r, _ in ahead]
  if more:
    extra = stages.decode(cloaker, more)
    cloaker.detect(extra)
    sample += extra
  chosen, _ = stages.choose_targets(cloaker, sample, pool)
  # A user with no usable face yet tries again with the next chunk's photos.
  targets.update({u: t for u, t in chosen.items() if t is not None})


def _feature_shift(cloaker: Cloaker, items: Sequence[Item]) -> dict[int, tuple[dict, dict]]:
  """id(face) -> (its features on the original, on the written and re-decoded file), for
  the cloaked faces of cloaked photos: what the report says each model sees."""
  done = [(it, f) for it in items if it.status == "cloaked" for f in it.faces
          if f.status == "cloaked"]
  orig = cloaker.region_features([f.region for _, f in done])
  written = cloaker.region_features(
      [regions_lib.recut(f.region, it.written_rgb) for it, f in done])
  return {id(f): ({e: orig[e][i] for e in orig}, {e: written[e][i] for e in written})
          for i, (_, f) in enumerate(done)}


def _write(out_dir: Path, it: Item, src: Path) -> None:
  """The cloaked photo, else an exact copy of the input: never a damaged or partial photo.
  The format is kept, so is the name."""
  if it.output is None and it.status == "pending":
    it.status = "no_face"
  data = it.data if it.output is None else it.output
  atomic_write(output_file(out_dir, it.name, source=src), data,
               permission_bits(src.stat().st_mode))


def _report_line(cloaker: Cloaker, it: Item, target: targets_lib.Target | None,
                 shift: dict, seconds: float) -> dict:
  config = cloaker.config
  target_name, target_feats = (target.name, target.features) if target else (None, None)
  if config.scope == "person" and it.faces:  # each person has their own target, named in the stats
    target_name = it.main_face().stats.get("target")
  faces = [_face_record(f, target_feats, *shift.get(id(f), (None, None)), cloaker.extractors)
           for f in it.faces]
  return {"input": it.name, "output": it.name, "user": it.user, "status": it.status,
          "message": it.message or None, "faces": faces,
          "notes": it.notes + (it.photo.notes if it.photo else []), "target": target_name,
          "mode": config.mode, "budget": config.budget, "seconds": round(seconds, 3)}


def _every_user_has_a_person(book, users: dict, report: Path) -> None:
  """scope="person": a user none of whose photos had a usable face has nothing to cloak."""
  grouped = set(book.users_with_people())
  faceless = [u for u in users if u not in grouped]
  if faceless:
    raise ValueError(f"user {faceless[0]!r}: no usable face in its {len(users[faceless[0]])} "
                     "photos, so there is no person to cloak (they were copied unchanged; "
                     f"see {report})")
