"""The migrate job on a Ray cluster (the only module that imports ray).

Two actor stages, as in Ray Data's batch-inference pattern: `DetectStage`
(decode + YuNet detect + face regions, CPU) and `CloakStage` (targets + the
compiled cloak + paste/encode), one CloakStage per GPU (or a few on a CPU-only
cluster). Each actor loads weights and builds its jitted functions once in
`__init__`; batches are the driver's chunks, and `CloakConfig.batch_size`
sizes the compiled face batch for the device. Actors are spread over nodes.

The driver walks SRC, reads inputs, streams chunks to the actors (a bounded
number in flight, so memory stays bounded) and writes every result to DST and
the manifest itself, exactly as the local runner does (`migrate.Job`): the
manifest stays the single truth and resuming is the same. A killed actor is
restarted (`max_restarts`) and its in-flight chunk retried
(`max_task_retries`); since only the driver writes, a retried chunk can be
neither lost nor recorded twice.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import ray

from jaxcloak.pipeline import migrate as mig

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4


def _setup_jax(folder: str | None) -> None:
  from jaxcloak import compile_cache
  compile_cache.enable(folder and Path(folder))


def _make_cloaker(config, cloaker_kwargs: dict, detect_side: int | None):
  from jaxcloak.pipeline.cloaker import Cloaker
  cloaker = Cloaker(config, **cloaker_kwargs)
  mig.set_detect_side(cloaker, detect_side)
  return cloaker


class _Stage:
  def where(self) -> tuple[int, str]:
    """(process id, node id) of this actor."""
    return os.getpid(), ray.get_runtime_context().get_node_id()


class DetectStage(_Stage):
  """Decode, detect and cut regions for a chunk of tasks."""

  def __init__(self, config, cloaker_kwargs: dict, options: mig.Options, compile_cache=None):
    _setup_jax(compile_cache)
    self.cloaker = _make_cloaker(config, cloaker_kwargs, options.detect_side)
    self.max_faces = options.max_faces

  def __call__(self, tasks: list) -> list:
    mig.prepare(self.cloaker, tasks, max_faces=self.max_faces)
    return tasks


class CloakStage(_Stage):
  """Targets, the compiled optimisation and write-back; returns records and output bytes."""

  def __init__(self, config, cloaker_kwargs: dict, options: mig.Options, compile_cache=None):
    _setup_jax(compile_cache)
    self.cloaker = _make_cloaker(config, cloaker_kwargs, options.detect_side)
    self.pool = None

  def load_pool(self, pool_dir: str):
    from jaxcloak.pipeline.local import pool_features
    self.pool = pool_features(self.cloaker, Path(pool_dir), log=lambda m: None)
    return self.pool

  def set_pool(self, pool) -> None:
    self.pool = pool

  def __call__(self, tasks: list, targets: dict) -> tuple[list, dict]:
    new = mig.cloak_stage(self.cloaker, tasks, targets=targets, pool=self.pool)
    all_targets = {**targets, **new}
    return [mig.result_of(t, target=all_targets.get(t.user)) for t in tasks], new


def migrate(src: Path, dst: Path, config, *, options: mig.Options = mig.Options(),
            address: str | None = "auto", cloak_actors: int | None = None,
            detect_actors: int | None = None, weights_dir: str | None = None,
            strip_metadata: bool = False, max_pixels: int | None = None,
            pool_dir: Path | None = None, compile_cache: str | None = None,
            in_flight_per_actor: int = 2, progress: bool | None = None,
            log: Callable[[str], None] = print, log_every: float = 30.0,
            kill_actor_after: int | None = None) -> dict:
  """Migrates SRC into DST with Ray actors; same manifest, statuses and resume as local.

  Args:
    address: Ray cluster address ("auto" = this node's cluster; None inside a
      `ray job submit` job or to start a local one).
    cloak_actors: default one per GPU in the cluster, else 2 (CPU-only).
    in_flight_per_actor: chunks queued per cloak actor (bounds driver memory).
    kill_actor_after: fault drill: ray.kill() a busy cloak actor after this many
      chunks, to show its chunk is retried on the restarted actor.
  """
  t0 = time.time()
  job = mig.Job(src, dst, config, options, log=log)
  tty = sys.stderr.isatty() if progress is None else progress
  if not ray.is_initialized():
    ray.init(address=address, log_to_driver=True)
  resources = ray.cluster_resources()
  gpus = int(resources.get("GPU", 0))
  n_cloak = cloak_actors or (gpus if gpus else 2)
  n_detect = detect_actors or n_cloak
  cloaker_kwargs = {"weights_dir": weights_dir, "strip_metadata": strip_metadata}
  if max_pixels is not None:
    cloaker_kwargs["max_pixels"] = max_pixels
  cpu_share = max(0.1, min(1.0, resources.get("CPU", 1) / (n_cloak + n_detect)))
  common = dict(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                scheduling_strategy="SPREAD")
  cloak_cls = ray.remote(CloakStage).options(
      num_gpus=1 if gpus else 0, num_cpus=0 if gpus else cpu_share, **common)
  detect_cls = ray.remote(DetectStage).options(num_cpus=cpu_share, **common)
  cloakers = [cloak_cls.remote(config, cloaker_kwargs, options, compile_cache)
              for _ in range(n_cloak)]
  detectors = [detect_cls.remote(config, cloaker_kwargs, options, compile_cache)
               for _ in range(n_detect)]
  placement = ray.get([a.where.remote() for a in cloakers + detectors])
  log(f"ray: {n_cloak} cloak actors ({'GPU' if gpus else 'CPU'}) and {n_detect} detect "
      f"actors on {len({n for _, n in placement})} node(s)")
  if config.mode == "targeted":
    if pool_dir is None:
      raise mig.MigrateError("targeted mode needs a target pool (--pool DIR)")
    pool_ref = ray.put(ray.get(cloakers[0].load_pool.remote(str(pool_dir))))
    ray.get([a.set_pool.remote(pool_ref) for a in cloakers[1:]])

  job.progress = mig.Progress(mig.count_entries(job.src), tty=tty, log=log, every=log_every)
  inflight: dict = {}  # result ref -> (chunk, cloak actor index, users choosing a target)
  load = [0] * n_cloak
  choosing: set[str] = set()
  done_chunks = 0
  killed = 0

  def collect() -> None:
    nonlocal done_chunks
    ready, _ = ray.wait(list(inflight), num_returns=1)
    ref = ready[0]
    chunk, k, users = inflight.pop(ref)
    load[k] -= 1
    try:
      results, new = ray.get(ref)
    except (ray.exceptions.RayError, mig.MigrateError) as e:
      results, new = mig.error_results(chunk, e), {}
    job.save_targets(new)  # before any output that used them
    job.write_results(results)
    choosing.difference_update(users)
    done_chunks += 1

  for chunk in job.chunks(job.tasks()):
    need = set()
    if config.mode == "targeted":
      need = {t.user for t in chunk} - set(job.state.targets)
      while need & choosing:  # one chunk chooses a user's target; the rest reuse it
        collect()
        need -= set(job.state.targets)
    while len(inflight) >= in_flight_per_actor * n_cloak:
      collect()
    k = min(range(n_cloak), key=load.__getitem__)
    prepared = detectors[k % n_detect].__call__.remote(chunk)
    ref = cloakers[k].__call__.remote(prepared, dict(job.state.targets))
    inflight[ref] = (chunk, k, need)
    load[k] += 1
    choosing |= need
    if kill_actor_after is not None and not killed and done_chunks >= kill_actor_after:
      ray.kill(cloakers[k], no_restart=False)  # its queued chunks must be retried
      killed = 1
      log(f"ray: fault drill: killed cloak actor {k} with {load[k]} chunk(s) in flight")
  while inflight:
    collect()
  summary = job.finish(time.time() - t0)
  summary.update(ray_nodes=len([n for n in ray.nodes() if n["Alive"]]), cloak_actors=n_cloak,
                 detect_actors=n_detect, actors_killed=killed,
                 actor_nodes=len({n for _, n in placement}))
  for a in cloakers + detectors:
    ray.kill(a)
  return summary
