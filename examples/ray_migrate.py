"""`jaxcloak migrate` on a Ray cluster: the script `ray submit` (or `ray job submit`) runs.

Runs on the head node as the job's driver: it walks SRC, schedules chunks on
detect and cloak actors on every node, and appends the manifest. The actors
read SRC and write DST themselves, so SRC and DST are object-store URLs
(s3://bucket/photos, with s3fs installed) or folders at the same path on every
node. Weights need no shared path: each worker fetches and verifies the ones
it lacks (the cluster configs' setup commands fetch them all first).

  # a cluster from cluster/aws.yaml (cluster/README.md): SRC, DST and flags after `--`
  ray submit cluster/aws.yaml examples/ray_migrate.py -- \\
      s3://BUCKET/photos s3://BUCKET/cloaked --ray-gpus 8 --preset mid
  # a running cluster (examples/ray_job_submit.sh), or by hand on one of its nodes
  python examples/ray_migrate.py SRC DST --preset mid --mode untargeted

Flags are those of `jaxcloak migrate` (`--ray` defaults to the cluster this
runs in), and two for clusters whose GPU workers scale from zero, where the
job would otherwise size its actors by the GPUs present at its start (none):

  --ray-gpus N        ask the autoscaler for N GPUs and wait for them first;
                      released when the job ends, so idle workers scale down
  --ray-gpus-wait S   give up (error, exit 2) after S seconds (default 1800)
"""

import argparse
import sys

from jaxcloak import cli


def parse(argv: list[str]) -> tuple[list[str], str, int, float]:
  """(`jaxcloak migrate` argv, Ray address, GPUs to ask for, seconds to wait for them)."""
  # No abbreviations: `--ray` must not be read as a prefix of `--ray-gpus`.
  p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  p.add_argument("--ray", default="auto")
  p.add_argument("--ray-gpus", type=int, default=0)
  p.add_argument("--ray-gpus-wait", type=float, default=1800.0)
  ours, rest = p.parse_known_args(argv)
  return [*rest, "--ray", ours.ray], ours.ray, ours.ray_gpus, ours.ray_gpus_wait


def main(argv: list[str]) -> int:
  migrate_argv, address, gpus, wait = parse(argv)
  if not gpus:
    return cli.main(["migrate", *migrate_argv])
  import ray
  from jaxcloak.pipeline import ray_runner
  from jaxcloak.pipeline.job import MigrateError
  ray.init(address=address, log_to_driver=True)  # migrate() then joins this connection
  try:
    try:
      ray_runner.request_gpus(gpus, timeout_s=wait,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    except MigrateError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    return cli.main(["migrate", *migrate_argv])
  finally:
    ray_runner.release_gpus()


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
