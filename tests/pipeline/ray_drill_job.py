"""The Ray fault drill, kept out of the product: examples/ray_migrate.py's job,
with the cloak actor's process dying (os._exit) at the start of its chunk N+1,
once, as a crashed or preempted worker would. Ray must restart the actor and
retry that chunk and the ones queued behind it. Every file the driver opens
under SRC is counted too (workers read the inputs; the driver must read none).

  python tests/pipeline/ray_drill_job.py N MARKER SRC DST [jaxcloak migrate flags]

MARKER (a path every node sees) records the crash, so a restarted actor does
not crash again and the test can tell the drill ran.
"""

import atexit
import os
import runpy
import sys
from pathlib import Path

from jaxcloak.pipeline import ray_runner


class CrashingCloakStage(ray_runner.CloakStage):
  """CloakStage whose first incarnation exits hard at the start of chunk `after` + 1."""

  after, marker = None, None  # set by __main__; the class travels to the actor by value

  def __call__(self, tasks, targets):
    self.calls = getattr(self, "calls", 0) + 1
    if self.calls > self.after and not self.marker.exists():
      self.marker.write_text(f"cloak actor pid {os.getpid()} exited at chunk {self.calls}\n")
      os._exit(1)
    return super().__call__(tasks, targets)


if __name__ == "__main__":
  CrashingCloakStage.after = int(sys.argv.pop(1))
  CrashingCloakStage.marker = Path(sys.argv.pop(1)).resolve()
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
  ray_runner.CloakStage = CrashingCloakStage
  root = Path(__file__).resolve().parents[2]
  runpy.run_path(str(root / "examples" / "ray_migrate.py"), run_name="__main__")
