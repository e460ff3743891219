"""The Python API in three calls, re-exported at the package top:

    import jaxcloak
    summary = jaxcloak.cloak(["photos/"], "out/", pool="pool/", preset="mid")
    verdicts = jaxcloak.check("photos/", "out/")
    jaxcloak.migrate("archive.zip", "dst/", pool="pool/", preset="mid")

Each takes a preset name and any CloakConfig field as a keyword (or a whole
`config=`), and returns the same summary dict its command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jaxcloak.config import CloakConfig, preset as make_preset


def _config(config: CloakConfig | None, preset: str, fields: dict, *, pool) -> CloakConfig:
  if config is not None:
    if fields:
      raise TypeError("give a config= or preset and fields, not both")
    return config
  fields.setdefault("mode", "targeted" if pool is not None else "untargeted")
  return make_preset(preset, **fields)


def cloak(photos: Sequence[str | Path], output: str | Path, *, pool: str | Path | None = None,
          preset: str = "mid", config: CloakConfig | None = None, user: str | None = None,
          weights_dir=None, strip_metadata: bool = False, progress: bool = False,
          **fields) -> dict:
  """Cloaks photo files and folders into `output` (as `jaxcloak cloak`).

  Untargeted unless a target `pool` (a folder of identity folders) is given.
  """
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import cloak_photos, collect_photos, pool_features
  cfg = _config(config, preset, fields, pool=pool)
  cloaker = Cloaker(cfg, weights_dir=weights_dir, strip_metadata=strip_metadata)
  feats = pool_features(cloaker, Path(pool), log=lambda m: None) if cfg.mode == "targeted" else None
  return cloak_photos(cloaker, collect_photos([Path(p) for p in photos], user=user), Path(output),
                      pool=feats, progress=progress, log=lambda m: None)


def check(originals: str | Path, cloaked: str | Path, output: str | Path | None = None,
          **kw) -> dict:
  """Every ported recognizer's verdict on cloaked photos (as `jaxcloak check`)."""
  from jaxcloak import protection as check_lib
  return check_lib.check(Path(originals), Path(cloaked), None if output is None else Path(output),
                         **kw)


def migrate(src: str | Path, dst: str | Path, *, pool: str | Path | None = None,
            preset: str = "mid", config: CloakConfig | None = None, weights_dir=None,
            progress: bool = False, **fields) -> dict:
  """Migrates a folder or archive into `dst`, resumably (as `jaxcloak migrate`)."""
  from jaxcloak.pipeline import migrate as migrate_lib
  from jaxcloak.pipeline.cloaker import Cloaker
  cfg = _config(config, preset, fields, pool=pool)
  return migrate_lib.migrate(Path(src), Path(dst), cfg,
                             make_cloaker=lambda: Cloaker(cfg, weights_dir=weights_dir),
                             pool_dir=None if pool is None else Path(pool), progress=progress,
                             log=lambda m: None)
