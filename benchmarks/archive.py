"""An archive job, measured on a subset and extrapolated to the whole archive.

  .venv/bin/python benchmarks/archive.py [--preset low] [--per-identity 3] [--identities 0]
                                         [--compile-cache DIR] [--keep DIR]

The archive is `../shared/data` (faces/ and pool/: about 6,650 photos of about 880
people). The subset is the first `--per-identity` photos (in name order) of each
identity (of the first `--identities`, 0 = all), copied into one folder of identity
folders. `jaxcloak migrate SUBSET DST --preset P --mode untargeted` runs on it as
a person runs it, in a fresh process, start-up counted, with the compile cache
given (default: the user's, so a second run of this script is the warm figure).
One JSON line: photos, faces, statuses, wall and CPU seconds, photos/s, and the
whole archive's hours at that rate, beside official Fawkes' rate on this machine
(`low`, batch 8, 42.61 s/photo, head-to-head.md 2026-12-02: recorded, not rerun).

Last figures (2026-12-07, idle 2-core VM, `low`, 3 per identity of faces/ only:
123 photos): 0.456 photos/s with a fresh compile cache, 0.619 with it filled:
about 3.0 h for the whole archive (goal: 1 h; Fawkes about 79 h).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
FAWKES_LOW_S_PER_PHOTO = 42.61  # head-to-head.md, 2026-12-02, batch 8, this machine
SUFFIXES = {".jpg", ".jpeg", ".png"}


def _photos(identity: Path) -> list[Path]:
  return sorted(p for p in identity.iterdir() if p.suffix.lower() in SUFFIXES)


def _subset(data: Path, parts: list[str], per_identity: int, identities: int, dst: Path
            ) -> tuple[int, int]:
  """Copies the subset into dst/<part>-<identity>/; returns (subset photos, archive photos)."""
  chosen = total = 0
  people = [d for part in parts for d in sorted((data / part).iterdir()) if d.is_dir()]
  for k, person in enumerate(people):
    photos = _photos(person)
    total += len(photos)
    if identities and k >= identities:
      continue
    folder = dst / f"{person.parent.name}-{person.name}"
    folder.mkdir(parents=True)
    for p in photos[:per_identity]:
      shutil.copyfile(p, folder / p.name)  # migrate leaves links out of SRC uncloaked
      chosen += 1
  return chosen, total


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="low")
  ap.add_argument("--parts", default="faces,pool", help="folders of ../shared/data")
  ap.add_argument("--per-identity", type=int, default=3)
  ap.add_argument("--identities", type=int, default=0, help="the first N identities (0: all)")
  ap.add_argument("--compile-cache", help="as the CLI's flag (default: the user's cache)")
  ap.add_argument("--keep", type=Path, help="keep the subset and DST in this new folder")
  args = ap.parse_args()
  if not DATA.is_dir():
    raise SystemExit(f"error: {DATA}: missing (the archive this benchmark reads)")
  if args.keep and args.keep.exists():
    raise SystemExit(f"error: --keep {args.keep}: exists; give a new folder")
  work = args.keep or Path(tempfile.mkdtemp(prefix="jaxcloak-archive-"))
  work.mkdir(parents=True, exist_ok=True)
  chosen, total = _subset(DATA, args.parts.split(","), args.per_identity, args.identities,
                          work / "subset")
  cmd = [sys.executable, "-m", "jaxcloak", "migrate", str(work / "subset"), str(work / "dst"),
         "--preset", args.preset, "--mode", "untargeted"]
  if args.compile_cache:
    cmd += ["--compile-cache", args.compile_cache]
  load = os.getloadavg()[0]
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t0
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  if run.returncode != 0:
    raise SystemExit(f"error: {' '.join(cmd)} failed: {run.stderr.strip().splitlines()[-1:]}")
  summary = json.loads(run.stdout.strip().splitlines()[-1])
  rate = chosen / wall
  print(json.dumps({
      "bench": "archive", "preset": args.preset, "parts": args.parts,
      "per_identity": args.per_identity, "photos": chosen, "archive_photos": total,
      "faces": summary.get("faces"), "by_status": summary.get("by_status"),
      "wall_s": round(wall, 1),
      "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
      "photos_per_s": round(rate, 3), "archive_hours": round(total / rate / 3600, 2),
      "fawkes_recorded_archive_hours": round(total * FAWKES_LOW_S_PER_PHOTO / 3600, 1),
      "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2),
      "work": str(work) if args.keep else None}), flush=True)
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
