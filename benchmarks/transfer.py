"""Leave-one-out transfer of cloaks, fast: feature-space verdicts on real faces, per knob.

Cloaks `--users` x `--per-user` photos of ../shared/data/faces through the real
pipeline (`cloak_photos`: detection, regions, JPEG-aware loop, written files),
targeted toward identities of ../shared/data/pool chosen by the ensemble, with
every model in `--ensemble`, then judges each written face with every ported
model (re-detected from the file, as a tracker would):

- fooled: the model no longer matches the cloaked face to the original
  (distance above its own same-person threshold, docs/verification.md);
- closer: the cloaked face is closer to the target's centroid than to the
  user's own clean centroid (all of the user's photos), in that model's space,
  which is what a tracker trained on the cloaked photos learns from.

Models outside the ensemble are the held-out (transfer) figures; members are
white-box. This is a proxy of `jaxcloak eval --experiments transfer` (trackers
and PSR), cheap enough to sweep knobs on 2 cores. Each `--knob` is
`name=field:value,field:value` on top of `--preset` (values parsed as Python
literals), e.g.:

    python benchmarks/transfer.py --ensemble dlib,facenet --knob mean=ensemble:'"mean"' \
        --knob balanced= --knob views2=views:2

Prints one JSON line per knob.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxcloak import models
from jaxcloak.config import CloakConfig, preset
from jaxcloak.pipeline.cloaker import Cloaker, Item
from jaxcloak.pipeline.local import cloak_photos, collect_photos, pool_features

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


def parse_knob(text: str) -> tuple[str, dict]:
  name, _, fields = text.partition("=")
  overrides = {}
  for part in filter(None, fields.split(";")):
    key, _, value = part.partition(":")
    overrides[key] = ast.literal_eval(value)
  return name, overrides


def main_face_features(judge: Cloaker, data: list[bytes]) -> dict[str, np.ndarray | None]:
  """Per model [n, d] features of each photo's largest face (NaN rows where none)."""
  items = [Item(str(i), d) for i, d in enumerate(data)]
  for it in items:
    judge.decode(it)
  judge.detect(items)
  found = [it for it in items if it.faces]
  feats = judge.identity_features(found)
  out = {}
  for e in judge.config.extractors:
    full = np.full((len(items), feats[e].shape[1]), np.nan, np.float32)
    full[[i for i, it in enumerate(items) if it.faces]] = feats[e]
    out[e] = full
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="mid")
  ap.add_argument("--ensemble", default="dlib,facenet", help="models the cloak is made with")
  ap.add_argument("--judges", default=",".join(models.EXTRACTORS))
  ap.add_argument("--users", type=int, default=4)
  ap.add_argument("--per-user", type=int, default=5)
  ap.add_argument("--first-user", type=int, default=10, help="skip this many identities")
  ap.add_argument("--pool-ids", type=int, help="use only the first N pool identities (faster)")
  ap.add_argument("--knob", action="append", default=[], help="name=field:value;field:value")
  ap.add_argument("--keep", help="folder to keep the written photos in")
  args = ap.parse_args()
  ensemble = tuple(args.ensemble.split(","))
  judges = tuple(args.judges.split(","))
  knobs = [parse_knob(k) for k in (args.knob or ["default="])]

  faces = (DATA / "faces").resolve()
  users = [d for d in sorted(faces.iterdir()) if d.is_dir()
           and len(list(d.glob("*.jpg"))) >= 2 * args.per_user][args.first_user:][:args.users]
  work = Path(tempfile.mkdtemp(prefix="jaxcloak-transfer-"))
  src = work / "in"
  for u in users:
    (src / u.name).mkdir(parents=True)
    for f in sorted(u.glob("*.jpg"), key=lambda p: int(p.stem))[:args.per_user]:
      shutil.copy(f, src / u.name / f.name)
  photos = collect_photos([src])

  judge = Cloaker(CloakConfig(extractors=judges))
  thresholds = {e.name: e.same_person_distance for e in judge.extractors}
  pool_dir = (DATA / "pool").resolve()
  if args.pool_ids:
    pool_dir = ROOT / "out" / f"pool-{args.pool_ids}"  # symlinks: a stable, cacheable subset
    pool_dir.mkdir(parents=True, exist_ok=True)
    for d in sorted(p for p in (DATA / "pool").resolve().iterdir() if p.is_dir())[:args.pool_ids]:
      if not (pool_dir / d.name).exists():
        (pool_dir / d.name).symlink_to(d)
  pool = pool_features(judge, pool_dir)
  # Each user's clean centroid per model, from all of their photos.
  own = {}
  for u in users:
    f = main_face_features(judge, [p.read_bytes() for p in sorted(u.glob("*.jpg"))])
    own[u.name] = {e: _unit(np.nanmean(f[e], axis=0)) for e in judges}
  originals = main_face_features(judge, [p.read_bytes() for p, _, _ in photos])

  for name, overrides in knobs:
    config = preset(args.preset, extractors=ensemble, mode="targeted", **overrides)
    out = work / f"out-{name}"
    cloaker = Cloaker(config)
    t0 = time.time()
    summary = cloak_photos(cloaker, photos, out, pool=pool, progress=False, log=lambda _: None)
    seconds = time.time() - t0
    records = {r["input"]: r for r in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    written = main_face_features(judge, [(out / records[rel]["output"]).read_bytes()
                                         for _, rel, _ in photos])
    per_model = {}
    for e in judges:
      fooled, closer, n = 0, 0, 0
      for k, (_, rel, user) in enumerate(photos):
        r = records[rel]
        w, o = written[e][k], originals[e][k]
        if r["status"] != "cloaked" or np.isnan(w).any() or np.isnan(o).any():
          continue
        n += 1
        fooled += np.linalg.norm(w - o) > thresholds[e]
        target = pool.centroids(e)[pool.names.index(r["target"])]
        closer += np.linalg.norm(w - target) < np.linalg.norm(w - own[user][e])
      per_model[e] = {"role": "member" if e in ensemble else "held_out", "faces": n,
                      "fooled": round(fooled / max(n, 1), 3), "closer": round(closer / max(n, 1), 3)}
    dssim, worst = [], []
    for _, rel, _ in photos:
      r = records[rel]
      for f in r["faces"]:
        if f["status"] == "cloaked":
          dssim.append(f["dssim"])
          worst.append(f.get("worst_block", np.nan))
    held = [v for v in per_model.values() if v["role"] == "held_out"]
    print(json.dumps({
        "bench": "transfer", "knob": name, "overrides": overrides, "preset": args.preset,
        "ensemble": ensemble, "photos": len(photos), "by_status": summary["by_status"],
        "mean_dssim": round(float(np.mean(dssim)), 5) if dssim else None,
        "max_worst_block": round(float(np.nanmax(worst)), 5) if worst else None,
        "mean_worst_block": round(float(np.nanmean(worst)), 5) if worst else None,
        "seconds_per_photo": round(seconds / len(photos), 2),
        "held_out_closer_min": min((v["closer"] for v in held), default=None),
        "models": per_model}), flush=True)
    if args.keep:
      shutil.copytree(out, Path(args.keep) / name, dirs_exist_ok=True)
  shutil.rmtree(work)


def _unit(v):
  return v / max(np.linalg.norm(v), 1e-12)


if __name__ == "__main__":
  main()
