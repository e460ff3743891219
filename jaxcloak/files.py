"""Atomic file writes: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
from pathlib import Path


@functools.cache
def new_file_mode() -> int:
  """What open() gives a new file here: 0o666 less the umask (usually 0o644).
  mkstemp's 0o600 would make every output private to its writer."""
  umask = os.umask(0o022)
  os.umask(umask)
  return 0o666 & ~umask


def permission_bits(st_mode: int | None) -> int | None:
  """The rwx bits of a source (setuid, setgid and sticky bits are not copied)."""
  return None if not st_mode else stat.S_IMODE(st_mode) & 0o777


@contextlib.contextmanager
def atomic_file(path: Path, mode: int | None = None):
  """Yields a binary file that becomes `path` (fsynced, renamed) only if the block
  succeeds, with permission bits `mode` (default: a new file's, new_file_mode)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fchmod(f.fileno(), new_file_mode() if mode is None else mode)
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
  with atomic_file(path, mode) as f:
    f.write(data)
