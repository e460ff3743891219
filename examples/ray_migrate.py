"""`jaxcloak migrate` as a Ray job: the entrypoint that `ray job submit` runs.

Runs on the cluster's head node as the job driver: walks SRC, streams chunks to
detect and cloak actors on every node, and writes DST and its manifest. SRC and
DST must be paths the head node can read and write (a shared or local disk);
the actors only see bytes. All flags are those of `jaxcloak migrate`; `--ray`
defaults to the cluster this job runs in. See examples/ray_job_submit.sh.

  python examples/ray_migrate.py SRC DST --preset mid --mode untargeted
"""

import sys

from jaxcloak.pipeline import migrate

if __name__ == "__main__":
  argv = sys.argv[1:]
  if not any(a == "--ray" or a.startswith("--ray=") for a in argv):
    argv += ["--ray", "auto"]
  sys.exit(migrate.main(["migrate", *argv]))
