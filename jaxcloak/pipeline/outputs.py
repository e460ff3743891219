"""Reading a migration input and writing its output, wherever that runs: in the driver,
or in a Ray worker on any node that sees SRC and DST at the same paths or URLs.

Every output appears whole (`destination.py`: a reader never sees half a
photo) and keeps its input's permission bits where DST has them; SRC is only
ever opened for reading. The record returned says what was written (`output`, `size_out`,
`sha256_out`), so the manifest row can follow it.
"""

from __future__ import annotations

import errno
import hashlib
import zipfile
from typing import Callable

from jaxcloak.pipeline.destination import Destination
from jaxcloak.pipeline.manifest import sha256_bytes
from jaxcloak.pipeline.records import Task

# The disk, not the photo: the job stops (a rerun resumes where it stopped).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
READ_ERRORS = (OSError, RuntimeError, zipfile.BadZipFile)


def write_output(dst: Destination, rec: dict, data: bytes, mode: int | None) -> bool:
  """Writes DST/rec["input"] whole and notes it in rec; False if the path cannot
  exist in DST (rec becomes `write_failed`). Disk errors raise."""
  try:
    dst.write(rec["input"], data, mode)
  except OSError as e:
    if e.errno in DISK_ERRNOS:
      raise
    # e.g. archive members "a" and "a/b": the path cannot exist in DST.
    rec.update(status="write_failed", output=None, message=(
        f"{rec['input']}: cannot be written to DST ({e.strerror}); retried on the next run"))
    return False
  rec.update(output=rec["input"], size_out=len(data), sha256_out=sha256_bytes(data))
  return True


def unreadable(rel: str, user: str, size, notes, err: BaseException) -> dict:
  msg = getattr(err, "strerror", None) or str(err)
  return {"input": rel, "user": user, "size": size, "sha256": None, "status": "unreadable",
          "message": f"{rel}: cannot be read ({msg})", "faces": 0, "notes": notes,
          "output": None}


def copy_large(open_input: Callable[[], object], dst: Destination, rel: str, user: str, size,
               notes, mode: int | None, limit: int) -> dict:
  """Stream-copies a file too large to decode, hashing as it goes; returns its record."""
  h = hashlib.sha256()
  n = 0
  try:
    with open_input() as f, dst.open_write(rel, mode) as g:
      while block := f.read(1 << 20):
        h.update(block)
        g.write(block)
        n += len(block)
  except READ_ERRORS as e:
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      raise
    return unreadable(rel, user, size, notes, e)
  digest = h.hexdigest()
  return {"input": rel, "user": user, "size": n, "sha256": digest, "status": "too_large_file",
          "faces": 0, "notes": notes,
          "message": f"{rel}: {n:,} bytes is over the {limit:,}-byte limit for decoding; "
                     "copied unchanged",
          "output": rel, "size_out": n, "sha256_out": digest}


def read_task(task: Task, open_input: Callable[[], object], *, dst: Destination,
              max_file_bytes: int) -> dict | None:
  """Reads and hashes an unread task's input in place; returns its final record instead
  when it needs no compute (unreadable, or too large: then it is copied here)."""
  if task.size is not None and task.size > max_file_bytes:
    return copy_large(open_input, dst, task.rel, task.user, task.size, task.notes, task.mode,
                      max_file_bytes)
  try:
    with open_input() as f:
      task.data = f.read()
  except READ_ERRORS as e:
    return unreadable(task.rel, task.user, task.size, task.notes, e)
  task.size, task.sha256 = len(task.data), sha256_bytes(task.data)
  return None
