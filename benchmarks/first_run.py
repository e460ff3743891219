"""The README's main command, timed as a person meets it: first run, then second run.

  .venv/bin/python benchmarks/first_run.py [--preset low] [--runs 2] [--warmup]

Runs `jaxcloak cloak --samples --preset P -o OUT` in fresh processes: first
with an empty persistent compile cache (a fresh clone, weights fetched), then
again with the cache it filled, and, as the peer in the same run, once more
with `--compile-cache off` (every run compiles everything, as before the cache).
With `--warmup`, `jaxcloak warmup --preset P` fills the empty cache first, timed
on its own line, as a server or cluster node would after installing.
One JSON line per run: wall seconds, the cache's size, the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(preset: str, out: Path, cache: str) -> dict:
  cmd = [sys.executable, "-m", "jaxcloak", "cloak", "--samples", "--preset", preset, "-o", str(out),
         "--quiet", "--compile-cache", cache]
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t0
  if r.returncode != 0:
    raise SystemExit(f"error: {' '.join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}")
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  return {"wall_s": round(wall, 1), "photos": summary["photos"],
          "cloaked": summary["by_status"].get("cloaked", 0), "max_dssim": summary["max_dssim"],
          "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="low")
  ap.add_argument("--runs", type=int, default=2, help="runs with the cache (first, second, ...)")
  ap.add_argument("--warmup", action="store_true", help="run `jaxcloak warmup` first")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    cache = Path(tmp) / "xla"
    if args.warmup:
      cmd = [sys.executable, "-m", "jaxcloak", "warmup", "--preset", args.preset, "--quiet",
             "--compile-cache", str(cache)]
      t0 = time.perf_counter()
      r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
      if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}")
      print(json.dumps({"bench": "first_run", "preset": args.preset, "run": "warmup",
                        "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    for i in range(args.runs):
      rec = _run(args.preset, Path(tmp) / f"out{i}", str(cache))
      size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
      print(json.dumps({"bench": "first_run", "preset": args.preset, "run": i + 1,
                        "compile_cache": "on", "cache_mb": round(size / 2**20, 1), **rec}),
            flush=True)
    rec = _run(args.preset, Path(tmp) / "peer", "off")
    print(json.dumps({"bench": "first_run", "preset": args.preset, "run": "peer",
                      "compile_cache": "off", **rec}), flush=True)


if __name__ == "__main__":
  main()
