"""Archive throughput: in-process `migrate` vs the Ray runner with 1 and 2 cloak actors.

  python benchmarks/scale.py --photos 48 --steps 10 [--out reports/scale.jsonl]

The same N face photos (LFW, each its own identity folder) are migrated three
times into fresh DSTs: in-process, then on a local Ray cluster (started here
with `ray.init`, loopback only) with 1 and with 2 cloak actors. Every run is
warmed first on a few other photos so compiles are excluded (the persistent
XLA cache makes the actors' compiles cache loads). Writes one JSON line:
photos/s for each, Ray's overhead per photo versus in-process, the driver's
CPU seconds per photo and the number of input files it opened (Ray: 0, the
workers read SRC and write DST), device, versions.

Last seen (2-core shared CPU VM, no GPU, noisy: other jobs were running;
dlib, untargeted, `--photos 32 --steps 5`, batch 8, 64 px regions): in-process
0.52 photos/s; Ray 1 cloak actor 0.94 (the detect and cloak stages overlap on
2 cores); Ray 2 cloak actors 0.80. See BUILD.md ("Archive scale") for the 10 M estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_photos(dst: Path, faces: Path, n: int, offset: int = 0) -> None:
  files = sorted(faces.glob("*/*.jpg"))[offset:offset + n]
  for f in files:
    out = dst / f.parent.name / f.name
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f, out)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--photos", type=int, default=48)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--max-region", type=int, default=64)
  ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
  ap.add_argument("--out", type=Path)
  args = ap.parse_args()

  os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # throwaway loopback cluster
  import jax
  work = Path(tempfile.mkdtemp(prefix="jcscale"))
  cache = work / "xla"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  import ray
  from jaxcloak.config import CloakConfig
  from jaxcloak.pipeline import migrate as mig
  from jaxcloak.pipeline import ray_runner
  from jaxcloak.pipeline.cloaker import Cloaker

  config = CloakConfig(mode="untargeted", steps=args.steps, batch_size=args.batch_size,
                       max_region=args.max_region)
  options = mig.Options(chunk=args.batch_size)
  photos, warm = work / "photos", work / "warm"
  make_photos(photos, args.faces, args.photos)
  make_photos(warm, args.faces, 8, offset=args.photos)
  quiet = lambda m: None  # noqa: E731
  result = {"photos": args.photos, "steps": args.steps, "batch_size": args.batch_size,
            "max_region": args.max_region}

  t = time.time()
  cloaker = Cloaker(config)
  mig.migrate(warm, work / "w0", config, options=options, make_cloaker=lambda: cloaker,
              progress=False, log=quiet)
  result["local_warmup_s"] = round(time.time() - t, 2)
  # The driver's own cost: CPU seconds of this process, and input files it opened.
  opened: list[str] = []
  root = str(photos.resolve())
  sys.addaudithook(lambda ev, a: ev == "open" and a and isinstance(a[0], str)
                   and os.path.realpath(a[0]).startswith(root) and opened.append(a[0]))
  t, cpu = time.time(), time.process_time()
  s = mig.migrate(photos, work / "local", config, options=options, make_cloaker=lambda: cloaker,
                  progress=False, log=quiet)
  local = time.time() - t
  result["local_driver_cpu_s_per_photo"] = round((time.process_time() - cpu) / args.photos, 4)
  result["local_driver_input_files_opened"] = len(opened)
  result["local_photos_per_s"] = round(args.photos / local, 3)
  result["faces_cloaked"] = s["faces_cloaked"]
  del cloaker

  ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
  for n in (1, 2):
    kw = dict(options=options, cloak_actors=n, detect_actors=1, compile_cache=str(cache),
              progress=False, log=quiet)
    ray_runner.migrate(warm, work / f"w{n}", config, **kw)  # actors start + load the cache
    opened.clear()
    t, cpu = time.time(), time.process_time()
    ray_runner.migrate(photos, work / f"ray{n}", config, **kw)
    elapsed = time.time() - t
    result[f"ray{n}_driver_cpu_s_per_photo"] = round((time.process_time() - cpu) / args.photos, 4)
    result[f"ray{n}_driver_input_files_opened"] = len(opened)
    result[f"ray{n}_photos_per_s"] = round(args.photos / elapsed, 3)
    result[f"ray{n}_overhead_s_per_photo"] = round((elapsed - local) / args.photos, 3)
  ray.shutdown()
  result.update(device=str(jax.devices()[0]), cpus=os.cpu_count(), jax=jax.__version__,
                ray=ray.__version__, python=platform.python_version(),
                note="the Ray runs include actor start-up and weight loading per run; "
                     "compiles come from the persistent cache")
  line = json.dumps(result)
  print(line)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
      f.write(line + "\n")
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
