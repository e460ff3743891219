"""The inputs of a migration: every file of a folder, object under a URL, or member of a
.zip or .tar, safely.

Walking decides what needs no reading (unsafe member names, links that leave
SRC, devices, duplicate names) and gives each readable input an `Entry`. An
entry's `locator` names its bytes so that another process can read them itself
(a Ray worker on a node that sees the same filesystem): a file path, an fsspec
URL (`s3://bucket/photos/...`, `gs://`, `file://`; the filesystem's package,
e.g. s3fs, installed), or a zip path and member. Tar members have none: a tar
is one stream, read by whoever walks it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import fsspec

from jaxcloak.files import permission_bits


class SourceError(ValueError):
  """SRC is not something that can be migrated."""


@dataclasses.dataclass
class Entry:
  """One input: a file in a folder or a member of an archive."""
  rel: str  # manifest key and output path (POSIX, relative to SRC/DST)
  size: int | None
  open: Callable[[], object] | None = None  # -> binary file object; None if not readable
  status: str | None = None  # decided without reading (unsafe_path, symlink_loop, ...)
  message: str = ""
  notes: list = dataclasses.field(default_factory=list)
  mode: int | None = None  # the source's permission bits, given to its output
  locator: tuple | None = None  # ("file", path) | ("url", url) | ("zip", archive, member offset)


def open_locator(locator: tuple):
  """Opens an entry's bytes from its locator (in any process that sees the path)."""
  kind, path, *member = locator
  if kind == "file":
    return open(path, "rb")
  if kind == "url":
    return fsspec.open(path, "rb").open()
  if kind == "zip":
    zf, by_offset = _zip_index(path)
    return zf.open(by_offset[member[0]])
  raise ValueError(f"unknown locator kind {kind!r}")


_open_zip: dict = {}  # the archive a worker reads from now: path -> (ZipFile, offset -> info)


def _zip_index(path: str):
  if path not in _open_zip:
    for zf, _ in _open_zip.values():
      zf.close()
    _open_zip.clear()
    zf = zipfile.ZipFile(path)
    _open_zip[path] = zf, {i.header_offset: i for i in zf.infolist()}
  return _open_zip[path]


def safe_member_name(name: str) -> tuple[str | None, str]:
  """(relative POSIX path, "") for a safe archive member name, else (None, reason)."""
  norm = name.replace("\\", "/")
  if "\x00" in norm:
    return None, "member name contains a NUL byte"
  if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
    return None, "absolute member path"
  parts = [p for p in norm.split("/") if p not in ("", ".")]
  if ".." in parts:
    return None, "member path climbs out of the archive ('..')"
  if not parts:
    return None, "empty member path"
  return "/".join(parts), ""


def walk_dir(root: Path, *, exclude: Sequence[Path] = ()) -> Iterator[Entry]:
  """Every file under root in sorted order; symlinks are followed only to files inside root."""
  real_root = root.resolve()
  exclude = {Path(p).resolve() for p in exclude}

  def rec(folder: Path, prefix: str) -> Iterator[Entry]:
    try:
      names = sorted(os.listdir(folder))
    except OSError as e:
      yield Entry(prefix.rstrip("/") or ".", None, status="unreadable",
                  message=f"{prefix or './'}: folder cannot be listed ({e.strerror}); "
                          "its contents are not migrated")
      return
    for name in names:
      path, rel = folder / name, prefix + name
      try:
        st = os.lstat(path)
      except OSError as e:
        yield Entry(rel, None, status="unreadable", message=f"{rel}: cannot stat ({e.strerror})")
        continue
      if stat.S_ISLNK(st.st_mode):
        yield _symlink_entry(path, rel, real_root)
      elif stat.S_ISDIR(st.st_mode):
        if path.resolve() not in exclude:
          yield from rec(path, rel + "/")
      elif stat.S_ISREG(st.st_mode):
        yield Entry(rel, st.st_size, open=lambda p=path: open(p, "rb"),
                    mode=permission_bits(st.st_mode), locator=("file", str(path)))
      else:
        yield Entry(rel, None, status="not_a_regular_file",
                    message=f"{rel}: not a regular file (device, pipe or socket); skipped")

  yield from rec(root, "")


def _symlink_entry(path: Path, rel: str, real_root: Path) -> Entry:
  try:
    target = path.resolve(strict=True)
  except (RuntimeError, OSError) as e:
    if isinstance(e, FileNotFoundError):
      return Entry(rel, None, status="broken_symlink",
                   message=f"{rel}: symlink to {os.readlink(path)!r}, which does not exist")
    return Entry(rel, None, status="symlink_loop", message=f"{rel}: symlink loop ({e}); skipped")
  if not target.is_relative_to(real_root):
    return Entry(rel, None, status="symlink_outside",
                 message=f"{rel}: symlink points outside SRC ({target}); not followed")
  if target.is_dir():
    if path.parent.resolve().is_relative_to(target):
      return Entry(rel, None, status="symlink_loop",
                   message=f"{rel}: symlink to its own ancestor folder; not followed")
    return Entry(rel, None, status="symlink_dir",
                 message=f"{rel}: symlink to a folder inside SRC; not followed (that folder "
                         "is migrated where it lives)")
  st = target.stat()
  return Entry(rel, st.st_size, open=lambda: open(target, "rb"),
               notes=[f"symlink to {target.relative_to(real_root).as_posix()}"],
               mode=permission_bits(st.st_mode), locator=("file", str(target)))


def walk_zip(path: Path) -> Iterator[Entry]:
  with zipfile.ZipFile(path) as zf:
    seen = set()
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
      if info.is_dir():
        continue
      rel, why = safe_member_name(info.filename)
      mode = info.external_attr >> 16
      if rel is None:
        yield Entry(info.filename, info.file_size, status="unsafe_path",
                    message=f"{info.filename!r}: {why}; never extracted (zip slip guard)")
      elif stat.S_ISLNK(mode):
        yield Entry(rel, info.file_size, status="unsafe_path",
                    message=f"{rel}: zip member is a symlink; never extracted")
      elif info.flag_bits & 0x1:
        yield Entry(rel, info.file_size, status="unreadable",
                    message=f"{rel}: encrypted zip member; cannot be read")
      elif rel in seen:
        yield Entry(rel + f"#{info.header_offset}", info.file_size, status="duplicate_name",
                    message=f"{rel}: a second member with the same name; only the first is migrated")
      else:
        seen.add(rel)
        # Zips made on Windows carry no Unix mode: those outputs get a new file's.
        yield Entry(rel, info.file_size, open=lambda i=info: zf.open(i),
                    mode=permission_bits(mode), locator=("zip", str(path), info.header_offset))


def walk_tar(path: Path) -> Iterator[Entry]:
  # Stream mode reads members in order without seeking (works on compressed
  # tars of any size); `members` is cleared as we go so memory stays flat.
  with tarfile.open(path, "r|*") as tf:
    seen = set()
    for m in tf:
      tf.members.clear()
      if m.isdir():
        continue
      rel, why = safe_member_name(m.name)
      if rel is None:
        yield Entry(m.name, m.size, status="unsafe_path",
                    message=f"{m.name!r}: {why}; never extracted (tar slip guard)")
      elif m.issym() or m.islnk():
        yield Entry(rel, None, status="unsafe_path",
                    message=f"{rel}: tar member is a link to {m.linkname!r}; never extracted")
      elif not m.isreg():
        yield Entry(rel, None, status="not_a_regular_file",
                    message=f"{rel}: tar member is a device or pipe; skipped")
      elif rel in seen:
        yield Entry(rel + f"#{m.offset}", m.size, status="duplicate_name",
                    message=f"{rel}: a second member with the same name; only the first is migrated")
      else:
        seen.add(rel)
        yield Entry(rel, m.size, open=lambda m=m: tf.extractfile(m), mode=permission_bits(m.mode))


def is_url(src) -> bool:
  """An fsspec URL (protocol://...), as opposed to a local path."""
  return isinstance(src, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", src) is not None


def url_filesystem(url: str):
  """(fsspec filesystem, root path without protocol) of a URL; SourceError if unusable."""
  try:
    fs, root = fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:  # unknown protocol, or its package not installed
    raise SourceError(f"{url}: {e}") from None
  return fs, root.rstrip("/")


def local_path(fs, root: str) -> Path | None:
  """The local path an fsspec URL names (file://), or None for any other filesystem."""
  protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
  return Path(root) if {"file", "local"} & set(protocols) else None


def walk_url(url: str) -> Iterator[Entry]:
  """Every object under an fsspec URL, in sorted order; names are checked like archive
  members (an object key may hold '..')."""
  fs, root = url_filesystem(url)
  if not fs.isdir(root):
    raise SourceError(f"{url}: not a folder (prefix) of objects")
  for path, info in sorted(fs.find(root, detail=True).items()):
    if info.get("type", "file") != "file":
      continue
    key = path[len(root):].lstrip("/")
    rel, why = safe_member_name(key)
    if rel is None:
      yield Entry(key, info.get("size"), status="unsafe_path",
                  message=f"{key!r}: {why}; never written outside DST")
      continue
    yield Entry(rel, info.get("size"), open=lambda p=path: fs.open(p, "rb"),
                locator=("url", fs.unstrip_protocol(path)))


def walk(src: Path | str, *, exclude: Sequence[Path] = ()) -> Iterator[Entry]:
  if is_url(src):
    return walk_url(src)
  src = Path(src)
  if src.is_dir():
    return walk_dir(src, exclude=exclude)
  if zipfile.is_zipfile(src):
    return walk_zip(src)
  if src.is_file() and tarfile.is_tarfile(src):
    return walk_tar(src)
  raise SourceError(f"{src}: not a folder, .zip or .tar archive")


def count_entries(src: Path) -> int | None:
  """Number of inputs, for the progress bar (None for a tar, which would need a full read)."""
  if is_url(src):
    fs, root = url_filesystem(src)
    return len(fs.find(root))
  src = Path(src)
  if src.is_dir():
    return sum(len(files) + sum(os.path.islink(os.path.join(d, x)) for x in dirs)
               for d, dirs, files in os.walk(src))
  if zipfile.is_zipfile(src):
    with zipfile.ZipFile(src) as zf:
      return sum(not i.is_dir() for i in zf.infolist())
  return None
