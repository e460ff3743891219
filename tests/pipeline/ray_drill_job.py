"""The Ray fault drill, kept out of the product: examples/ray_migrate.py's job,
with one busy cloak actor killed after N chunks (it must restart, and its chunk
be retried), and every file the driver opens under SRC counted (workers read
the inputs; the driver must read none).

  python tests/pipeline/ray_drill_job.py N SRC DST [jaxcloak migrate flags]
"""

import atexit
import functools
import os
import runpy
import sys
from pathlib import Path

from jaxcloak.pipeline import ray_runner

if __name__ == "__main__":
  after = int(sys.argv.pop(1))
  src = Path(sys.argv[1]).resolve()
  opened = []

  def audit(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
      path = Path(os.path.realpath(os.fsdecode(args[0])))
      if path.is_relative_to(src):
        opened.append(str(path.relative_to(src)))

  sys.addaudithook(audit)
  atexit.register(lambda: print(f"driver opened {len(opened)} input file(s) under SRC: "
                                f"{opened[:5]}", flush=True))
  ray_runner.migrate = functools.partial(ray_runner.migrate, kill_actor_after=after)
  root = Path(__file__).resolve().parents[2]
  runpy.run_path(str(root / "examples" / "ray_migrate.py"), run_name="__main__")
