"""The Ray fault drill, kept out of the product: examples/ray_migrate.py's job,
with one busy cloak actor killed after N chunks (it must restart, and its chunk
be retried).

  python tests/pipeline/ray_drill_job.py N SRC DST [jaxcloak migrate flags]
"""

import functools
import runpy
import sys
from pathlib import Path

from jaxcloak.pipeline import ray_runner

if __name__ == "__main__":
  after = int(sys.argv.pop(1))
  ray_runner.migrate = functools.partial(ray_runner.migrate, kill_actor_after=after)
  root = Path(__file__).resolve().parents[2]
  runpy.run_path(str(root / "examples" / "ray_migrate.py"), run_name="__main__")
