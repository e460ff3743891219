"""`jaxcloak migrate` as a Ray job: the entrypoint that `ray job submit` runs.

Runs on the cluster's head node as the job driver: it walks SRC, schedules
chunks on detect and cloak actors on every node, and appends the manifest.
The actors read SRC and write DST themselves, so SRC and DST must be at the
same paths on every node (a shared filesystem). All flags are those of
`jaxcloak migrate`; `--ray` defaults to the cluster this job runs in. See
examples/ray_job_submit.sh.

  python examples/ray_migrate.py SRC DST --preset mid --mode untargeted
"""

import sys

from jaxcloak import cli

if __name__ == "__main__":
  argv = sys.argv[1:]
  if not any(a == "--ray" or a.startswith("--ray=") for a in argv):
    argv += ["--ray", "auto"]
  sys.exit(cli.main(["migrate", *argv]))
