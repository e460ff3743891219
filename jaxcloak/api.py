"""The Python API in three calls, re-exported at the package top:

    import jaxcloak
    summary = jaxcloak.cloak(["photos/"], "out/", pool="pool/", preset="mid")
    verdicts = jaxcloak.check("photos/", "out/")
    jaxcloak.migrate("archive.zip", "dst/", pool="pool/", preset="mid")

Each takes a preset name and any CloakConfig field as a keyword (or a whole
`config=`), and any EngineSettings field (weights_dir, strip_metadata,
max_pixels, detect_side; or a whole `settings=`), and returns the same summary
dict its command prints. The commands are these calls behind their flags
(`settings=` built from them), so both keep the same rules: a
mistake a person can make raises ValueError (or FileNotFoundError), and no
call writes into, onto or around what it reads (`jaxcloak.paths`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from jaxcloak.config import CloakConfig, EngineSettings, preset as make_preset
from jaxcloak.paths import refuse_overlap

UNTARGETED_NOTE = ("no pool given: using the untargeted objective (push features away from the "
                   "photo's own); give a target pool (--pool DIR) for the paper's targeted cloak")


def default_mode(pool) -> str:
  """With a target pool the paper's targeted cloak, without one untargeted."""
  return "targeted" if pool is not None else "untargeted"


def _config(config: CloakConfig | None, preset: str, fields: dict, *, pool,
            log: Callable[[str], None]) -> CloakConfig:
  """The config given, else the preset with the fields; a mode not given follows the pool
  (the one place that rule is applied: the commands pass their flags here)."""
  if config is not None:
    if fields:
      raise TypeError(f"give a config= or preset and fields, not both (got {sorted(fields)})")
    return config
  defaulted = fields.get("mode") is None
  if defaulted:
    fields["mode"] = default_mode(pool)
  config = make_preset(preset, **fields)
  if defaulted and pool is None:  # said once the settings are known good
    log(UNTARGETED_NOTE)
  return config


def _take(fields: dict, record) -> dict:
  """Pops the keywords that name a field of the dataclass `record` (None: not given)."""
  names = {f.name for f in dataclasses.fields(record)}
  taken = {k: fields.pop(k) for k in list(fields) if k in names}
  return {k: v for k, v in taken.items() if v is not None}


def _settings(settings: EngineSettings | None, fields: dict) -> EngineSettings:
  """The settings given, else built from the EngineSettings keywords among `fields`."""
  given = _take(fields, EngineSettings)
  if settings is None:
    return EngineSettings(**given)
  if given:
    raise TypeError(f"give a settings= or its fields, not both (got {sorted(given)})")
  return settings


def _need_pool(config: CloakConfig, pool) -> None:
  if config.mode != "targeted":
    return
  if pool is None:
    raise ValueError("targeted mode needs a target pool (--pool DIR of identity folders); "
                     "use --mode untargeted to cloak without one")
  if not Path(pool).is_dir():
    raise FileNotFoundError(f"target pool {pool}: no such folder (give --pool DIR of identity "
                            "folders)")


def _quiet(message: str) -> None:
  pass


def warmup(*, preset: str = "mid", config: CloakConfig | None = None,
           settings: EngineSettings | None = None, log: Callable[[str], None] = _quiet,
           **fields) -> float:
  """Compiles the common programs of the cloak that `cloak` with these settings and no pool
  runs (as `jaxcloak warmup`; `pipeline/warmup.py`). Returns the seconds it took."""
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.warmup import warm_up
  settings = _settings(settings, fields)
  return warm_up(Cloaker(_config(config, preset, fields, pool=None, log=_quiet), settings),
                 log=log)


def cloak(photos: Sequence[str | Path], output: str | Path, *, pool: str | Path | None = None,
          preset: str = "mid", config: CloakConfig | None = None,
          settings: EngineSettings | None = None, user: str | None = None,
          report: str | Path | None = None, check: bool = False, progress: bool = False,
          log: Callable[[str], None] = _quiet, **fields) -> dict:
  """Cloaks photo files and folders into `output` (as `jaxcloak cloak`).

  Untargeted unless a target `pool` (a folder of identity folders) is given.
  `check=True` then judges every output with every ported recognizer
  (`output/check`), as `jaxcloak cloak --check`.
  """
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import cloak_photos, collect_photos, pool_features
  settings = _settings(settings, fields)
  cfg = _config(config, preset, fields, pool=pool, log=log)
  inputs = [Path(p) for p in photos]
  listed = collect_photos(inputs, user=user)
  if not listed:
    raise ValueError("no image files found in the inputs")
  out = Path(output)
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"-o {out}: is a file; give a folder for the cloaked photos (it is "
                             "created if missing)")
  refuse_overlap(out, inputs, what="output folder")
  _need_pool(cfg, pool)
  if cfg.scope == "person":  # a damaged or foreign saved cloak stops the job before it starts
    from jaxcloak import persons
    from jaxcloak.pipeline.destination import META_DIR
    persons.verify_folder(cfg, out / META_DIR)
  cloaker = Cloaker(cfg, settings)
  feats = pool_features(cloaker, Path(pool), log=log) if cfg.mode == "targeted" else None
  summary = cloak_photos(cloaker, listed, out, pool=feats, report=report, progress=progress,
                         log=log)
  summary["config"] = dataclasses.asdict(cfg)
  if check:
    from jaxcloak import protection
    result = protection.check_pairs(protection.pair_outputs(listed, out), out / "check",
                                    cloaked_with=cfg.extractors,
                                    weights_dir=settings.weights_dir)
    summary["check"] = {k: result[k] for k in ("models", "statuses", "sheets", "out")}
    log(protection.table(result))
  return summary


def check(originals: str | Path, cloaked: str | Path, output: str | Path | None = None,
          **kw) -> dict:
  """Every ported recognizer's verdict on cloaked photos (as `jaxcloak check`)."""
  from jaxcloak import protection
  return protection.check(Path(originals), Path(cloaked), None if output is None else Path(output),
                          **kw)


def migrate(src: str | Path, dst: str | Path, *, pool: str | Path | None = None,
            preset: str = "mid", config: CloakConfig | None = None,
            settings: EngineSettings | None = None, ray: str | None = None,
            ray_cloak_actors: int | None = None, compile_cache: str | None = None,
            check: bool = False, progress: bool = False, log: Callable[[str], None] = _quiet,
            log_every: float = 30.0, **fields) -> dict:
  """Migrates a folder, archive or fsspec URL into `dst`, resumably (as `jaxcloak migrate`).

  SRC and DST may be URLs (`s3://...`), passed through as typed. Keywords that
  name a `job.Options` field (user, chunk, chunk_bytes, max_file_bytes,
  max_faces, ...) set how the archive is walked, those naming an EngineSettings
  field the engine; the rest are CloakConfig fields. `ray` runs it on a Ray
  cluster ("auto" = this node's).
  """
  from jaxcloak.pipeline.job import Options
  from jaxcloak.pipeline.sources import is_url
  settings = _settings(settings, fields)
  options = Options(**_take(fields, Options))
  cfg = _config(config, preset, fields, pool=pool, log=log)
  _need_pool(cfg, pool)
  src, dst = (str(x) if is_url(str(x)) else Path(x) for x in (src, dst))
  pool_dir = None if pool is None else Path(pool)
  common = dict(options=options, settings=settings, pool_dir=pool_dir, progress=progress,
                log=log, log_every=log_every)
  if ray:
    from jaxcloak.pipeline import ray_runner
    summary = ray_runner.migrate(src, dst, cfg, address=ray, cloak_actors=ray_cloak_actors,
                                 compile_cache=compile_cache, **common)
  else:
    from jaxcloak.pipeline import migrate as migrate_lib
    summary = migrate_lib.migrate(src, dst, cfg, **common)
  if check:
    summary["check"] = _migrate_check(src, dst, cfg, settings.weights_dir, log)
  return summary


def _migrate_check(src, dst, config: CloakConfig, weights_dir, log) -> dict:
  """Every ported recognizer's verdict on DST's photos (a folder SRC and DST only)."""
  from jaxcloak import protection
  from jaxcloak.pipeline.job import META_DIR
  if isinstance(src, str) or not src.is_dir() or isinstance(dst, str):
    log("--check: SRC is an archive or URL, or DST a URL; run `jaxcloak check` on local copies")
    return {"skipped": "archive or URL"}
  result = protection.check(src, dst, dst / META_DIR / "check", cloaked_with=config.extractors,
                            weights_dir=weights_dir)
  log(protection.table(result))
  return {k: result[k] for k in ("models", "statuses", "sheets", "out")}
