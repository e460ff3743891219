"""DST, where a migration writes: a local folder or an fsspec URL, and the job's records.

Every output appears whole or not at all. A local file is written to a temp
name beside it, fsynced and renamed (keeping the input's permission bits). An
object under a URL (`s3://`, `gs://`, `file://`; the filesystem's package,
e.g. s3fs, installed) is written to a temp key and moved into place: a rename
on a filesystem, a server-side copy on an object store, so the key never
holds part of a photo. Object stores have no permission bits.

The manifest and state live in DST/.jaxcloak/ either way. In a folder the
manifest is one append-only JSONL file (`manifest.py`). Object stores cannot
append, so under a URL each sync writes the records since the last one as a
new numbered object, `.jaxcloak/manifest/00000001.jsonl`, ...; reading them
in order gives the same records, the last one for an input winning.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Iterator

from jaxcloak.files import atomic_file
from jaxcloak.paths import output_file
from jaxcloak.pipeline.manifest import Manifest, parse_records, sha256_file, sha256_stream
from jaxcloak.pipeline.sources import is_url, local_path, url_filesystem

META_DIR = ".jaxcloak"
PART_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part$")  # temp names (jaxcloak.files' too)


class Destination:
  """DST's outputs and its job records, in a local folder or under a URL."""

  def __init__(self, dst):
    self.is_url = is_url(str(dst))
    if self.is_url:
      self.name = str(dst).rstrip("/")
      self.fs, self.root = url_filesystem(self.name)
      self.root = self.root.rstrip("/")
    else:
      self.root = Path(dst)
      self.name = str(self.root)

  def __str__(self) -> str:
    return self.name

  def local_folder(self) -> Path | None:
    """DST as a local folder (a path, or a file:// URL), for the SRC/DST overlap rule."""
    return local_path(self.fs, self.root) if self.is_url else self.root

  def is_taken(self) -> bool:
    """Whether something other than a folder already holds DST's name."""
    if self.is_url:
      return self.fs.isfile(self.root)
    return self.root.exists() and not self.root.is_dir()

  def _key(self, rel: str) -> str:
    return f"{self.root}/{rel}"

  def _temp_key(self, rel: str) -> str:
    head, sep, name = rel.rpartition("/")
    return self._key(f"{head}{sep}.{name}.{secrets.token_hex(4)}.part")

  # -- outputs ---------------------------------------------------------------

  def write(self, rel: str, data: bytes, mode: int | None = None) -> None:
    """DST/rel holds `data`, whole; raises OSError if it cannot."""
    with self.open_write(rel, mode) as f:
      f.write(data)

  @contextlib.contextmanager
  def open_write(self, rel: str, mode: int | None = None):
    """A binary file that becomes DST/rel only if the block succeeds."""
    if not self.is_url:
      with atomic_file(output_file(self.root, rel), mode) as f:
        yield f
      return
    final, tmp = self._key(rel), self._temp_key(rel)
    self.fs.makedirs(final.rpartition("/")[0], exist_ok=True)
    try:
      with self.fs.open(tmp, "wb") as f:
        yield f
      self.fs.mv(tmp, final)
    except BaseException:
      with contextlib.suppress(Exception):
        self.fs.rm_file(tmp)
      raise

  def read(self, rel: str) -> bytes | None:
    """DST/rel's bytes, or None if it cannot be read."""
    try:
      return self.fs.cat_file(self._key(rel)) if self.is_url else (self.root / rel).read_bytes()
    except (OSError, ValueError):
      return None

  def holds(self, rel: str, size: int, sha256: str) -> bool:
    """Whether DST/rel is there with exactly this size and sha256."""
    try:
      if not self.is_url:
        out = self.root / rel
        return out.stat().st_size == size and sha256_file(out) == sha256
      key = self._key(rel)
      if self.fs.size(key) != size:
        return False
      with self.fs.open(key, "rb") as f:
        return sha256_stream(f) == sha256
    except (OSError, ValueError):
      return False

  def remove_partials(self, keep: set[str]) -> None:
    """Removes temp files a killed run left behind (never a recorded output)."""
    if self.is_url:
      keys = self.fs.find(self.root) if self.fs.isdir(self.root) else []
      for key in keys:
        rel = key[len(self.root) + 1:] if key.startswith(self.root + "/") else None
        if rel and PART_RE.match(rel.rpartition("/")[2]) and rel not in keep:
          self.fs.rm_file(key)
      return
    for d, _, files in os.walk(self.root):
      for f in files:
        p = Path(d) / f
        if PART_RE.match(f) and p.relative_to(self.root).as_posix() not in keep:
          p.unlink(missing_ok=True)

  # -- the job's records -----------------------------------------------------

  def prepare(self) -> None:
    """Creates DST/.jaxcloak."""
    if self.is_url:
      self.fs.makedirs(self._key(META_DIR), exist_ok=True)
    else:
      (self.root / META_DIR).mkdir(parents=True, exist_ok=True)

  def manifest(self):
    if self.is_url:
      return SegmentManifest(self, f"{META_DIR}/manifest")
    return Manifest(self.root / META_DIR / "manifest.jsonl")

  def read_meta(self, name: str) -> bytes | None:
    return self.read(f"{META_DIR}/{name}")

  def write_meta(self, name: str, data: bytes) -> None:
    self.write(f"{META_DIR}/{name}", data)

  def meta_location(self, name: str) -> str:
    return f"{self.name}/{META_DIR}/{name}"


class SegmentManifest:
  """The manifest under a URL: one numbered JSONL object per sync (see the module doc)."""

  def __init__(self, dest: Destination, folder: str):
    self.dest, self.folder = dest, folder
    self.path = dest.meta_location("manifest/")
    self._pending: list[bytes] = []
    self._next: int | None = None

  def _segments(self) -> list[str]:
    fs, key = self.dest.fs, self.dest._key(self.folder)
    if not fs.isdir(key):
      return []
    names = [p.rpartition("/")[2] for p in fs.ls(key, detail=False)]
    return sorted(n for n in names if re.fullmatch(r"\d{8}\.jsonl", n))

  def records(self) -> Iterator[dict]:
    for name in self._segments():
      yield from parse_records((self.dest.read(f"{self.folder}/{name}") or b"").splitlines(True))

  def load(self) -> dict[str, dict]:
    return {r["input"]: r for r in self.records()}

  def append(self, record: dict, *, sync: bool = True) -> None:
    self._pending.append((json.dumps(record, ensure_ascii=False) + "\n").encode())
    if sync:
      self.sync()

  def sync(self) -> None:
    """Writes the records since the last sync as the next segment (whole or not at all)."""
    if not self._pending:
      return
    if self._next is None:
      segments = self._segments()
      self._next = int(segments[-1][:8]) + 1 if segments else 1
    self.dest.write(f"{self.folder}/{self._next:08d}.jsonl", b"".join(self._pending))
    self._next += 1
    self._pending = []

  def close(self) -> None:
    self.sync()
