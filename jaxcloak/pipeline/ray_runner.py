"""The migrate job on a Ray cluster (the only module that imports ray).

Workers do the photo I/O; the driver walks SRC, schedules and records, and
touches photo bytes in three cases only: a `.tar`'s members (one stream: it
reads and ships them), files over `max_file_bytes` (it stream-copies them
unchanged, never decoded) and duplicates (it copies the earlier output within
DST). Two actor stages:

- `DetectStage` reads each input from SRC itself (by its locator), hashes it,
  decodes it and finds its faces. It holds a `FaceFinder` (YuNet only, no
  recognizer) and takes a share of a GPU when the cluster has one.
- `CloakStage` cuts the regions, chooses targets, runs the compiled cloak and
  writes each output into DST itself (atomic rename, the input's permission
  bits). One per GPU, or a few on a CPU-only cluster.

A chunk's bytes go from the detect actor to the cloak actor through Ray's
object store: the driver passes references and gets back only manifest
records, which it appends in walk order (so resuming is exact, and an input
whose bytes an earlier input had becomes its duplicate, as in process). SRC
and DST must be at the same paths on every node (a shared filesystem) or URLs
(an object store) every node can reach.

Actors rather than Ray Data's `map_batches`: the manifest is committed in walk
order, a user's target is chosen by one chunk before the user's other chunks
start, and a killed actor's chunk is retried (`max_task_retries`) without being
recorded twice. A streaming dataset would own ordering and retries; these
three rules would have to be rebuilt around it.

Workers need no shared weights path: each actor, before it loads a model,
fetches and verifies the weights its node lacks (`weights.ensure`), and the
driver turns a node's failed fetch into one error naming the command to run.
On an autoscaling cluster whose GPU workers start from zero, `request_gpus`
asks for them before the job sizes its actors (cluster/README.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

import ray

from jaxcloak import compile_cache as compile_cache_lib
from jaxcloak import persons, weights
from jaxcloak.config import EngineSettings
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.destination import Destination
from jaxcloak.pipeline.job import Job, MigrateError, Options, Progress
from jaxcloak.pipeline.outputs import DISK_ERRNOS, read_task, write_output
from jaxcloak.pipeline.records import error_results
from jaxcloak.pipeline.sources import count_entries, open_locator

MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
DETECT_GPU_SHARE = 0.25  # YuNet is small: detect actors share a GPU with a cloak actor
# Not 1: with each GPU wholly taken by its cloak actor, Ray could place no detect
# actor anywhere and the job would wait forever.
CLOAK_GPU_SHARE = 1 - DETECT_GPU_SHARE
DETECTOR = "yunet"


class _Stage:
  weights_error: str | None = None

  def _fetch_weights(self, names, weights_dir) -> bool:
    """Fetches this node's missing or altered weights; False (error kept) if it cannot.

    The error is returned by `where`, not raised: an exception in an actor's
    `__init__` reaches the driver wrapped in Ray's traceback, not as one line.
    """
    from jaxcloak import models
    # Fine-tuned variants are made (`weights robust`), not fetched.
    mods = {n: models.module(n) for n in names if n in models.MODULES}
    try:
      weights.ensure(mods, weights_dir=weights_dir and Path(weights_dir))
    except weights.WeightsError as e:
      self.weights_error = f"on node {ray.util.get_node_ip_address()}: {e}"
      return False
    return True

  def where(self) -> tuple[int, str, str | None]:
    """(process id, node id, weights error or None) of this actor."""
    return os.getpid(), ray.get_runtime_context().get_node_id(), self.weights_error


class DetectStage(_Stage):
  """Reads, hashes, decodes and finds faces for a chunk of tasks."""

  def __init__(self, config, settings: EngineSettings, options: Options, dst: str,
               compile_cache=None):
    from jaxcloak.pipeline.cloaker import FaceFinder
    if not self._fetch_weights([DETECTOR], settings.weights_dir):
      return
    compile_cache_lib.enable(compile_cache and Path(compile_cache))
    self.finder = FaceFinder(config, settings)
    self.options, self.dst = options, Destination(dst)

  def __call__(self, tasks: list) -> list:
    for t in tasks:
      if t.data is None:
        t.final = read_task(t, lambda: open_locator(t.locator), dst=self.dst,
                            max_file_bytes=self.options.max_file_bytes)
    stages.find_faces(self.finder, [t for t in tasks if t.final is None])
    return tasks


class CloakStage(_Stage):
  """Regions, targets, the compiled cloak, and the outputs written; returns records."""

  def __init__(self, config, settings: EngineSettings, options: Options, dst: str,
               compile_cache=None):
    from jaxcloak.pipeline.cloaker import Cloaker
    if not self._fetch_weights([DETECTOR, *config.extractors], settings.weights_dir):
      return
    compile_cache_lib.enable(compile_cache and Path(compile_cache))
    self.engine = Cloaker(config, settings)
    self.options, self.dst = options, Destination(dst)
    self.pool = None
    # scope="person": people known to this actor, saved in DST/.jaxcloak/persons. Actors
    # do not share it: two that meet a new person at once each make a cloak, and the
    # file keeps the last one saved (photos already written keep theirs).
    self.book = persons.Book(config, self.engine.extractors, read=self.dst.read_meta,
                             write=self.dst.write_meta) if config.scope == "person" else None

  def load_pool(self, pool_dir: str):
    from jaxcloak.pipeline.pool import pool_features
    self.pool = pool_features(self.engine, Path(pool_dir), log=lambda m: None)
    return self.pool

  def set_pool(self, pool) -> None:
    self.pool = pool

  def __call__(self, tasks: list, targets: dict) -> tuple[list, dict, tuple | None]:
    """(records, targets newly chosen, (errno, strerror) if the disk failed)."""
    records = [t.final for t in tasks if t.final is not None]
    todo = [t for t in tasks if t.final is None]
    chosen = {}
    try:
      for results, new in stages.process(self.engine, todo, targets=targets, pool=self.pool,
                                         max_faces=self.options.max_faces, book=self.book):
        chosen.update(new)
        for rec, data in results:
          if data is not None:
            write_output(self.dst, rec, data, rec.get("mode"))
          else:
            rec.setdefault("output", None)
          records.append(rec)
    except OSError as e:
      if e.errno not in DISK_ERRNOS:
        raise
      return [], chosen, (e.errno, e.strerror)
    return records, chosen, None


def _placement(actors: list) -> list[tuple[int, str, str | None]]:
  """Each actor's `where()`, once all have started; a node's weights error ends the job."""
  placement = ray.get([a.where.remote() for a in actors])
  errors = [e for _, _, e in placement if e]
  if errors:
    for a in actors:
      ray.kill(a)
    raise weights.WeightsError(errors[0])
  return placement


def request_gpus(gpus: int, *, timeout_s: float = 1800.0, poll_s: float = 5.0,
                 log: Callable[[str], None] = print) -> None:
  """Asks the autoscaler for `gpus` GPUs and waits until the cluster has them.

  `migrate` sizes its actors by the GPUs present when it starts, and on a
  cluster whose GPU workers scale from zero there are none yet. The request
  stays until `release_gpus` (or another request) replaces it.

  Raises:
    MigrateError: the GPUs did not come within `timeout_s` (request released).
  """
  from ray.autoscaler.sdk import request_resources
  request_resources(bundles=[{"GPU": 1}] * gpus)
  t0 = time.time()
  while (have := int(ray.cluster_resources().get("GPU", 0))) < gpus:
    if time.time() - t0 > timeout_s:
      release_gpus()
      raise MigrateError(
          f"asked the cluster for {gpus} GPUs, {have} came within {timeout_s:.0f} s "
          "(`ray monitor CLUSTER.yaml` shows why: quota, capacity, max_workers; "
          "or wait longer with --ray-gpus-wait)")
    time.sleep(poll_s)
  log(f"ray: {have} GPUs in the cluster after {time.time() - t0:.0f} s")


def release_gpus() -> None:
  """Drops the standing `request_gpus` request, so idle GPU workers can scale down."""
  from ray.autoscaler.sdk import request_resources
  request_resources(bundles=[])


def migrate(src: Path, dst: Path, config, *, options: Options = Options(),
            settings: EngineSettings = EngineSettings(), address: str | None = "auto",
            cloak_actors: int | None = None, detect_actors: int | None = None,
            pool_dir: Path | None = None, compile_cache: str | None = None,
            in_flight_per_actor: int = 2, progress: bool | None = None,
            log: Callable[[str], None] = print, log_every: float = 30.0) -> dict:
  """Migrates SRC into DST with Ray actors; same manifest, statuses and resume as local.

  Args:
    settings: the engine's, handed whole to every actor.
    address: Ray cluster address ("auto" = this node's cluster; None inside a
      `ray job submit` job or to start a local one).
    cloak_actors: default one per GPU in the cluster, else 2 (CPU-only).
    in_flight_per_actor: chunks queued per cloak actor (bounds worker memory).
  """
  t0 = time.time()
  job = Job(src, dst, config, options, settings=settings, log=log)
  tty = sys.stderr.isatty() if progress is None else progress
  if not ray.is_initialized():
    ray.init(address=address, log_to_driver=True)
  dest = job.dst.name if job.dst.is_url else str(Path(dst).resolve())
  actors = _Actors.start((config, settings, options, dest, compile_cache), cloak_actors,
                         detect_actors, log=log)
  if config.mode == "targeted":
    actors.share_pool(pool_dir)
  job.progress = Progress(count_entries(job.src), tty=tty, log=log, every=log_every)
  _Schedule(job, actors, in_flight_per_actor).run()
  summary = job.finish(time.time() - t0)
  summary.update(ray_nodes=len([n for n in ray.nodes() if n["Alive"]]),
                 cloak_actors=len(actors.cloakers), detect_actors=len(actors.detectors),
                 actor_nodes=actors.nodes)
  actors.kill()
  return summary


@dataclasses.dataclass
class _Actors:
  """A job's cloak and detect actors, each started and placed."""
  cloakers: list
  detectors: list
  placement: list  # each actor's `where()`

  @classmethod
  def start(cls, args: tuple, n_cloak: int | None, n_detect: int | None, *,
            log: Callable[[str], None]) -> "_Actors":
    """Sized by the cluster: one cloak actor per GPU (2 without), as many detect actors."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    n_cloak = n_cloak or (gpus if gpus else 2)
    n_detect = n_detect or n_cloak
    cpu_share = max(0.1, min(1.0, resources.get("CPU", 1) / (n_cloak + n_detect)))
    common = dict(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                  scheduling_strategy="SPREAD")
    cloak_cls = ray.remote(CloakStage).options(
        num_gpus=CLOAK_GPU_SHARE if gpus else 0, num_cpus=0 if gpus else cpu_share, **common)
    # On a GPU node the detector runs there too; JAX must not take the whole GPU for it.
    detect_env = {"env_vars": {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.1"}} if gpus else None
    detect_cls = ray.remote(DetectStage).options(
        num_gpus=DETECT_GPU_SHARE if gpus else 0, num_cpus=cpu_share, runtime_env=detect_env,
        **common)
    cloakers = [cloak_cls.remote(*args) for _ in range(n_cloak)]
    detectors = [detect_cls.remote(*args) for _ in range(n_detect)]
    actors = cls(cloakers, detectors, _placement(cloakers + detectors))
    log(f"ray: {n_cloak} cloak actors ({'GPU' if gpus else 'CPU'}) and {n_detect} detect "
        f"actors on {actors.nodes} node(s)")
    return actors

  @property
  def nodes(self) -> int:
    return len({n for _, n, _ in self.placement})

  def share_pool(self, pool_dir: Path | None) -> None:
    """The target pool's features, computed by one cloak actor and handed to the others."""
    if pool_dir is None:
      raise MigrateError("targeted mode needs a target pool (--pool DIR)")
    pool_ref = ray.put(ray.get(self.cloakers[0].load_pool.remote(str(pool_dir))))
    ray.get([a.set_pool.remote(pool_ref) for a in self.cloakers[1:]])

  def kill(self) -> None:
    for a in self.cloakers + self.detectors:
      ray.kill(a)


class _Schedule:
  """The driver's loop: chunks onto the least loaded cloak actor (through a detect
  actor), records committed in walk order, one chunk choosing each user's target."""

  def __init__(self, job: Job, actors: _Actors, in_flight_per_actor: int):
    self.job, self.actors = job, actors
    self.limit = in_flight_per_actor * len(actors.cloakers)
    self.inflight: dict = {}  # result ref -> (chunk number, chunk, cloak actor, users choosing)
    self.finished: dict[int, list] = {}  # chunk number -> its records, until earlier ones are in
    self.load = [0] * len(actors.cloakers)
    self.choosing: set[str] = set()  # users whose target a chunk in flight is choosing
    self.next_commit = 0

  def run(self) -> None:
    for number, chunk in enumerate(self.job.chunks(self.job.tasks(read=False))):
      self.submit(number, chunk)
    while self.inflight:
      self.collect()

  def submit(self, number: int, chunk: list) -> None:
    state = self.job.state
    need = set()
    if self.job.config.mode == "targeted":
      need = {t.user for t in chunk} - set(state.targets)
      while need & self.choosing:  # one chunk chooses a user's target; the rest reuse it
        self.collect()
        need -= set(state.targets)
    while len(self.inflight) >= self.limit:
      self.collect()
    k = min(range(len(self.load)), key=self.load.__getitem__)
    detectors = self.actors.detectors
    prepared = detectors[k % len(detectors)].__call__.remote(chunk)
    ref = self.actors.cloakers[k].__call__.remote(prepared, dict(state.targets))
    self.inflight[ref] = (number, chunk, k, need)
    self.load[k] += 1
    self.choosing |= need

  def collect(self) -> None:
    """Waits for one chunk; commits every finished chunk whose predecessors are in."""
    ready, _ = ray.wait(list(self.inflight), num_returns=1)
    number, chunk, k, users = self.inflight.pop(ready[0])
    self.load[k] -= 1
    try:
      records, new, disk = ray.get(ready[0])
    except ray.exceptions.RayError as e:
      records, new, disk = [r for r, _ in error_results(chunk, e, copied=False)], {}, None
    if disk is not None:
      raise OSError(*disk)
    self.job.save_targets(new)  # before any record that used them
    self.choosing.difference_update(users)
    self.finished[number] = records
    while self.next_commit in self.finished:  # the manifest follows the walk order
      for rec in self.finished.pop(self.next_commit):
        self.job.record_written(rec, sync=False)
      self.job.manifest.sync()  # one fsync per chunk, not per photo
      self.next_commit += 1
