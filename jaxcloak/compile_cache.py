"""JAX's persistent compilation cache: a cloak compiles once per machine, not once per run.

On by default, in the user's cache folder ($XDG_CACHE_HOME, else ~/.cache, then
jaxcloak/xla). `--compile-cache DIR` or JAXCLOAK_COMPILE_CACHE=DIR moves it;
`off` (either way) turns it off. The flag wins over the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "JAXCLOAK_COMPILE_CACHE"
OFF = ("off", "none", "0", "")
# Every program is kept: the many small ones (checks, detector shapes) each compile in
# under a second, but together cost a repeated small job seconds; a read takes ms.
MIN_COMPILE_SECONDS = 0.0


def default_dir() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "jaxcloak" / "xla"


def resolve(flag: str | None) -> Path | None:
  """The cache folder for a --compile-cache value (None = not given), or None for off."""
  value = flag if flag is not None else os.environ.get(ENV)
  if value is None:
    return default_dir()
  return None if value.strip().lower() in OFF else Path(value).expanduser()


def enable(folder: Path | None) -> Path | None:
  """Points JAX at `folder` (created); None leaves the cache off. Returns the folder."""
  from jaxcloak import programs
  if folder is None:
    programs.enable(None)
    return None
  import jax
  folder = Path(folder)
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"compile cache {folder}: cannot be created ({e.strerror}); give "
                     f"--compile-cache DIR elsewhere, or --compile-cache off") from None
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  programs.enable(folder / programs.SUBFOLDER)
  return folder


def add_flag(parser) -> None:
  parser.add_argument("--compile-cache", metavar="DIR|off",
                      help=f"persistent JAX compilation cache folder, or 'off' [default: ${ENV}, "
                           "else ~/.cache/jaxcloak/xla]")
