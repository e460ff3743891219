"""`jaxcloak migrate SRC DST`: cloak a whole photo archive, resumably, losing nothing.

SRC is a folder (walked in sorted order, nested), a .zip or a .tar(.gz/.bz2/.xz);
see `job.py` for what DST and its manifest hold and how a rerun resumes. This
module is the in-process driver loop: chunks of the job's tasks through the
stages, one engine, failures isolated to the photo that caused them. The same
job runs on a Ray cluster with `ray_runner.migrate`.

Memory is bounded by the chunk, not the archive: at most `chunk` photos,
`chunk_bytes` input bytes and `chunk_pixels` decoded pixels are held at once
(larger files are stream-copied without being decoded), plus a resume index of
about 200 bytes per input (path + two sha256 digests).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from jaxcloak.config import EngineSettings
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.job import META_DIR, Job, MigrateError, Options, Progress  # noqa: F401 (re-exported)
from jaxcloak import persons
from jaxcloak.pipeline.pool import pool_features
from jaxcloak.pipeline.sources import count_entries


def migrate(src: Path, dst: Path, config, *, options: Options = Options(),
            settings: EngineSettings = EngineSettings(),
            make_cloaker: Callable[[], object] | None = None, pool_dir: Path | None = None,
            pool=None, progress: bool | None = None, log: Callable[[str], None] = print,
            log_every: float = 30.0) -> dict:
  """Migrates SRC into DST in-process; returns the run's summary.

  Args:
    settings: the engine's (a job records `detect_side`).
    make_cloaker: builds the engine, with `settings` (called only if some photo
      needs computing); default `Cloaker(config, settings)`.
    pool_dir: target pool (identity folders), needed in targeted mode.
    pool: or its precomputed `targets.IdentityFeatures`.
    progress: a tqdm bar (True), log lines (False), or by whether stderr is a terminal.
  """
  t0 = time.time()
  job = Job(src, dst, config, options, settings=settings, log=log)
  tty = sys.stderr.isatty() if progress is None else progress
  job.progress = Progress(count_entries(job.src), tty=tty, log=log, every=log_every)
  cloaker, book = None, None
  for chunk in job.chunks(job.tasks()):
    if cloaker is None:
      cloaker = make_cloaker() if make_cloaker else _default_cloaker(config, settings)
      if cloaker.settings != settings:
        raise MigrateError(f"the engine was built with {cloaker.settings} but the job runs "
                           f"with {settings}; build it with the job's settings")
      if config.mode == "targeted" and pool is None:
        pool = _pool(cloaker, pool_dir, log)
      if config.scope == "person":  # each person's cloak is kept in DST/.jaxcloak for reruns
        book = persons.Book(config, cloaker.extractors, read=job.dst.read_meta,
                            write=job.dst.write_meta)
    for results, new in stages.process(cloaker, chunk, targets=job.state.targets, pool=pool,
                                       max_faces=options.max_faces, book=book):
      job.save_targets(new)  # before any output that used them
      job.write_results(results)
  return job.finish(time.time() - t0)


def _default_cloaker(config, settings: EngineSettings):
  from jaxcloak.pipeline.cloaker import Cloaker
  return Cloaker(config, settings)


def _pool(cloaker, pool_dir, log):
  if pool_dir is None:
    raise MigrateError("targeted mode needs a target pool (--pool DIR); or use --mode untargeted")
  return pool_features(cloaker, Path(pool_dir), log=log)

