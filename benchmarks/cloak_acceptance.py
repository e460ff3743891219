"""Acceptance run of `jaxcloak cloak` on real photos: budget on written files and targeted shift.

Cloaks `--users` identities x `--per-user` photos from ../shared/data/faces plus
the bundled sample photos, targeted toward identities of ../shared/data/pool,
then measures on the written, re-decoded files:

- every face's DSSIM over its region against the budget;
- for the white-box extractor, whether each cloaked face's features are closer
  to the target centroid than to the user's own clean centroid (all of the
  user's clean photos in faces/, the cloaked ones included as originals).

    python benchmarks/cloak_acceptance.py --preset mid --users 5 --per-user 10

Prints JSON lines: one summary per run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxcloak import SAMPLES_DIR
from jaxcloak.config import preset
from jaxcloak.faces import io as photo_io
from jaxcloak.faces import regions as regions_lib
from jaxcloak.pipeline.cloaker import Cloaker, Item
from jaxcloak.pipeline.local import cloak_photos, collect_photos, pool_features

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="mid")
  ap.add_argument("--extractor", default="dlib")
  ap.add_argument("--users", type=int, default=5)
  ap.add_argument("--per-user", type=int, default=10)
  ap.add_argument("--steps", type=int)
  ap.add_argument("--jpeg-quality", type=int, help="default: keep the inputs' tables")
  ap.add_argument("--refine-rounds", type=int, default=0)
  ap.add_argument("--no-jpeg-aware", action="store_true", help="optimise on raw pixels")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  overrides = {"extractors": (args.extractor,), "mode": "targeted"}
  if args.steps:
    overrides["steps"] = args.steps
  overrides["refine_rounds"] = args.refine_rounds
  overrides["jpeg_aware"] = not args.no_jpeg_aware
  if args.jpeg_quality:
    overrides["jpeg_quality"] = args.jpeg_quality
  config = preset(args.preset, **overrides)
  faces = (DATA / "faces").resolve()
  users = [d for d in sorted(faces.iterdir()) if d.is_dir()
           and len(list(d.glob("*.jpg"))) >= args.per_user][:args.users]
  work = Path(args.out or tempfile.mkdtemp(prefix="jaxcloak-accept-"))
  src = work / "in"
  for u in users:
    (src / u.name).mkdir(parents=True, exist_ok=True)
    for f in sorted(u.glob("*.jpg"), key=lambda p: int(p.stem))[:args.per_user]:
      shutil.copy(f, src / u.name / f.name)
  shutil.copytree(SAMPLES_DIR, src / "samples", dirs_exist_ok=True,
                  ignore=shutil.ignore_patterns("*.md"))

  t0 = time.time()
  cloaker = Cloaker(config)
  pool = pool_features(cloaker, (DATA / "pool").resolve())
  t_pool = time.time() - t0
  out = work / "out"
  if out.exists():
    shutil.rmtree(out)
  t1 = time.time()
  summary = cloak_photos(cloaker, collect_photos([src]), out, pool=pool, progress=False)
  t_cloak = time.time() - t1

  records = [json.loads(l) for l in (out / "report.jsonl").read_text().splitlines()]
  over, n_faces, closer, n_white = 0, 0, 0, 0
  ext = args.extractor
  for u in users:
    # The user's own clean centroid from all of their photos in faces/.
    items = [Item(p.name, p.read_bytes()) for p in sorted(u.glob("*.jpg"))]
    for it in items:
      cloaker.decode(it)
    cloaker.detect(items)
    own = cloaker.identity_features([it for it in items if it.faces])[ext]
    own_c = own.mean(0) / np.linalg.norm(own.mean(0))
    t_idx = pool.names.index(next(r["target"] for r in records if r["user"] == u.name))
    tgt_c = pool.centroids(ext)[t_idx]
    for r in (r for r in records if r["user"] == u.name and r["status"] == "cloaked"):
      written = photo_io.decode((out / r["output"]).read_bytes()).rgb
      orig = photo_io.decode((src / r["input"]).read_bytes()).rgb
      for f in r["faces"]:
        if f["status"] != "cloaked":
          continue
        n_faces += 1
        d = regions_lib.region_dssim(orig, written, f["region"])
        over += d > config.budget + 1e-9
      # White-box check on the photo's main (cloaked) face, from the written file.
      it = Item(r["output"], (out / r["output"]).read_bytes())
      cloaker.decode(it)
      cloaker.detect([it])
      if not it.faces:
        continue
      feat = cloaker.identity_features([it])[ext][0]
      n_white += 1
      closer += np.linalg.norm(feat - tgt_c) < np.linalg.norm(feat - own_c)
  # Sample photos: budget only (their users have no clean centroid here).
  for r in (r for r in records if r["user"] == "samples" and r["status"] == "cloaked"):
    written = photo_io.decode((out / r["output"]).read_bytes()).rgb
    orig = photo_io.decode((src / r["input"]).read_bytes()).rgb
    for f in (f for f in r["faces"] if f["status"] == "cloaked"):
      n_faces += 1
      over += regions_lib.region_dssim(orig, written, f["region"]) > config.budget + 1e-9
  print(json.dumps({
      "bench": "cloak_acceptance", "preset": args.preset, "extractor": ext,
      "jpeg_quality": args.jpeg_quality or "keep", "refine_rounds": args.refine_rounds,
      "budget": config.budget, "steps": config.steps, "photos": summary["photos"],
      "by_status": summary["by_status"], "faces_cloaked": n_faces,
      "faces_over_budget_on_written_file": int(over),
      "mean_dssim": summary["mean_dssim"], "max_dssim": summary["max_dssim"],
      "whitebox_faces": n_white, "closer_to_target_than_own_centroid": int(closer),
      "closer_fraction": round(closer / max(1, n_white), 4),
      "pool_seconds": round(t_pool, 1), "cloak_seconds": round(t_cloak, 1),
      "seconds_per_photo": round(t_cloak / max(1, summary["photos"]), 2),
      "output": str(out)}))


if __name__ == "__main__":
  main()
