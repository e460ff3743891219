"""The migration manifest: an append-only JSONL log that is the truth about a job.

One record per input (path, size, sha256 of input and output, status, faces,
DSSIM, target, message). Each record is written after its output file has been
renamed into place, then flushed and fsynced, so a record on disk always
describes an output that is complete. A process killed mid-write leaves at most
one torn last line; it is dropped on load and trimmed before the next append.

Next to it, a small JSON state (written whole, atomically) holds what must stay
the same across runs of one job: the cloak settings and each user's target.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator


VERSION = 1


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_stream(f, *, block: int = 1 << 20) -> str:
  h = hashlib.sha256()
  while chunk := f.read(block):
    h.update(chunk)
  return h.hexdigest()


def sha256_file(path: Path) -> str:
  with open(path, "rb") as f:
    return sha256_stream(f)


def parse_records(lines: Iterable[bytes]) -> Iterator[dict]:
  """The records of JSONL lines, in order; stops at a torn (unterminated) line."""
  for line in lines:
    if not line.endswith(b"\n"):
      break  # torn by a kill mid-write; the input will be redone
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(rec, dict) and "input" in rec:
      yield rec


class Manifest:
  """Append-only JSONL records keyed by input path; the last record for a path wins."""

  def __init__(self, path: Path):
    self.path = Path(path)
    self._file = None

  def records(self) -> Iterator[dict]:
    """Every complete record in file order (a torn trailing line is skipped)."""
    if not self.path.exists():
      return
    with open(self.path, "rb") as f:
      yield from parse_records(f)

  def load(self) -> dict[str, dict]:
    """input path -> its latest record."""
    return {r["input"]: r for r in self.records()}

  def open(self) -> "Manifest":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._trim_torn_tail()
    self._file = open(self.path, "ab")
    return self

  def _trim_torn_tail(self) -> None:
    if not self.path.exists() or self.path.stat().st_size == 0:
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      if data.endswith(b"\n"):
        return
      f.truncate(data.rfind(b"\n") + 1)
      f.flush()
      os.fsync(f.fileno())

  def append(self, record: dict, *, sync: bool = True) -> None:
    """Writes one record, durably (flush + fsync) unless `sync` is False: then the
    caller calls `sync()` after a group (a record lost before it only means
    that input is redone on resume; its output was already in place)."""
    if self._file is None:
      self.open()
    self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    if sync:
      self.sync()

  def sync(self) -> None:
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


class State:
  """The job's settings and per-user targets, rewritten whole (atomically) on change.

  `read()` gives the saved bytes (None if there are none), `write(bytes)` replaces
  them: a file in a DST folder, an object under a DST URL (`destination.py`).
  """

  def __init__(self, read: Callable[[], bytes | None], write: Callable[[bytes], None]):
    self._write = write
    self.data: dict = {"version": VERSION, "config": None, "targets": {}, "finished": False}
    saved = read()
    if saved is not None:
      self.data.update(json.loads(saved))

  @property
  def targets(self) -> dict[str, str | None]:
    return self.data["targets"]

  def save(self) -> None:
    self._write((json.dumps(self.data, indent=1, sort_keys=True) + "\n").encode())
