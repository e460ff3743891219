"""`jaxcloak migrate SRC DST`: cloak a whole photo archive, resumably, losing nothing.

SRC is a folder (walked in sorted order, nested), a .zip or a .tar(.gz/.bz2/.xz).
DST gets the same relative layout: the cloaked photo where faces were cloaked,
an exact copy of the input otherwise. SRC is only ever read. Every input gets
one record in `DST/.jaxcloak/manifest.jsonl` (see `manifest.py`), written after
its output is atomically renamed into place; that manifest is the truth on
resume: an input is skipped only if its record is final and its output still
has the recorded sha256. Each user's target (user = top-level folder, or
`--user`) is chosen once, saved in `DST/.jaxcloak/state.json` before any photo
of that user is written, and reused by every later run.

Memory is bounded by the chunk, not the archive: at most `chunk` photos,
`chunk_bytes` input bytes and `chunk_pixels` decoded pixels are held at once
(larger files are stream-copied without being decoded), plus a resume index of
about 200 bytes per input (path + two sha256 digests).

The stages (`prepare`: decode + detect + regions; `cloak_stage`: targets +
optimise + write-back; `result_of`: record + output bytes) are shared with the
Ray runner, which runs the first two on separate actors.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import json
import os
import re
import stat
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from jaxcloak import compile_cache, flags
from jaxcloak.faces import io as photo_io
from jaxcloak.files import atomic_file, atomic_write, permission_bits
from jaxcloak.pipeline.manifest import Manifest, State, sha256_bytes, sha256_file

META_DIR = ".jaxcloak"
# Statuses whose output is the cloaked photo or an exact copy; every status is
# final (a later run never retries it) unless its output went missing or changed.
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
               b"mif1", b"msf1", b"avif", b"avis"}
_PART_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part$")  # jaxcloak.files temp names


class MigrateError(Exception):
  """A job that cannot start (bad paths, settings differing from the recorded job)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How the archive is walked and chunked (the cloak itself is a CloakConfig)."""
  user: str | None = None  # one user id for every photo; default: top-level folder
  chunk: int = 32  # photos per chunk
  chunk_bytes: int = 256 << 20  # input bytes per chunk
  chunk_pixels: int = 256_000_000  # decoded pixels per chunk (header estimate)
  max_file_bytes: int = 256 << 20  # larger files are stream-copied, never decoded
  max_faces: int = 64  # faces cloaked per photo (largest first); the rest are reported
  detect_side: int | None = None  # detector long-side cap (None = the detector's default)

  def recorded(self) -> dict:
    """The options that change outputs, so must match across runs of one job."""
    return {"user": self.user, "max_faces": self.max_faces, "detect_side": self.detect_side}


# -- walking the source ----------------------------------------------------------


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
                    mode=permission_bits(st.st_mode))
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
               mode=permission_bits(st.st_mode))


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
                    mode=permission_bits(mode))


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


def walk(src: Path, *, exclude: Sequence[Path] = ()) -> Iterator[Entry]:
  src = Path(src)
  if src.is_dir():
    return walk_dir(src, exclude=exclude)
  if zipfile.is_zipfile(src):
    return walk_zip(src)
  if src.is_file() and tarfile.is_tarfile(src):
    return walk_tar(src)
  raise MigrateError(f"{src}: not a folder, .zip or .tar archive")


def count_entries(src: Path) -> int | None:
  """Number of inputs, for the progress bar (None for a tar, which would need a full read)."""
  src = Path(src)
  if src.is_dir():
    return sum(len(files) + sum(os.path.islink(os.path.join(d, x)) for x in dirs)
               for d, dirs, files in os.walk(src))
  if zipfile.is_zipfile(src):
    with zipfile.ZipFile(src) as zf:
      return sum(not i.is_dir() for i in zf.infolist())
  return None


# -- the stages ------------------------------------------------------------------


@dataclasses.dataclass
class Task:
  """One photo to compute: its bytes and identity, and the cloaker's Item for it."""
  rel: str
  user: str
  size: int
  sha256: str
  data: bytes
  notes: list = dataclasses.field(default_factory=list)
  item: object = None  # cloaker.Item, built in `prepare`
  seconds: float = 0.0
  mode: int | None = None  # the source's permission bits (Entry.mode)


def _heif_brand(data: bytes) -> bytes | None:
  return data[8:12] if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS else None


def _suffix_note(rel: str, fmt: str) -> str | None:
  ext = Path(rel).suffix.lower()
  want = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "PNG": (".png",), "WEBP": (".webp",),
          "TIFF": (".tif", ".tiff"), "BMP": (".bmp", ".dib")}.get(fmt)
  if want and ext not in want:
    return f"extension {ext or '(none)'} but content is {fmt}; kept the name and the {fmt} format"
  return None


def prepare(cloaker, tasks: Sequence[Task], *, max_faces: int = 64) -> None:
  """Stage 1: decode, detect, cut face regions (CPU-bound, no optimisation)."""
  from jaxcloak.pipeline.cloaker import Item
  min_face = cloaker.config.min_face
  live = []
  for t in tasks:
    t0 = time.perf_counter()
    it = t.item = Item(t.rel, t.data, t.user)
    brand = _heif_brand(t.data)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      cloaker.decode(it)
    for w in caught:  # PIL warns (rather than fails) on damaged EXIF; say so in the record
      if "EXIF" in str(w.message):
        t.notes.append(f"EXIF damaged ({w.message}); photo processed without it")
    if it.photo is None:
      if brand and it.status in ("not_an_image", "corrupt"):
        it.status = "unsupported_format"
        it.message = (f"{t.rel}: {brand.decode().upper()} (HEIF family) photo and no decoder "
                      "for it is installed; copied unchanged")
    elif it.photo.format not in photo_io.WRITABLE_FORMATS:
      it.status = "unsupported_format"
      it.message = (f"{t.rel}: {it.photo.format} cannot carry a cloak without changing the "
                    "file's format; copied unchanged")
    elif min(it.photo.rgb.shape[:2]) < min_face:
      h, w = it.photo.rgb.shape[:2]
      it.status = "too_small"
      it.message = (f"{t.rel}: {w}x{h} image is smaller than the smallest cloakable face "
                    f"({min_face} px); copied unchanged")
    else:
      note = _suffix_note(t.rel, it.photo.format)
      if note:
        t.notes.append(note)
      live.append(t)
    t.seconds += time.perf_counter() - t0
  t0 = time.perf_counter()
  items = [t.item for t in live]
  cloaker.detect(items)
  for it in items:
    if len(it.faces) > max_faces:
      order = sorted(range(len(it.faces)), key=lambda i: -it.faces[i].box[2] * it.faces[i].box[3])
      for i in order[max_faces:]:
        it.faces[i].status = "over_cap"
  cloaker.make_regions(items)
  for it in items:
    for f in it.faces:
      if f.status == "over_cap":
        f.region = None
  share = (time.perf_counter() - t0) / max(1, len(live))
  for t in live:
    t.seconds += share
    n = len(t.item.faces)
    if n > max_faces:
      t.notes.append(f"{n} faces; the {max_faces} largest were cloaked (max_faces), "
                     f"{n - max_faces} reported as over_cap")


def target_by_name(pool, name: str, extractors: Sequence[str]):
  from jaxcloak import targets as targets_lib
  if name not in pool.names:
    raise MigrateError(f"recorded target {name!r} is not in the target pool; use the pool "
                       "the job was started with")
  i = pool.names.index(name)
  return targets_lib.Target(name, i, float("nan"), {e: pool.centroids(e)[i] for e in extractors},
                            "recorded")


def cloak_stage(cloaker, tasks: Sequence[Task], *, targets: dict[str, str | None],
                pool=None) -> dict[str, str | None]:
  """Stage 2: per-user targets, the compiled optimisation, paste + encode.

  Args:
    targets: user -> recorded target name (None = user had no usable face).
  Returns:
    targets chosen for users not in `targets` (to be recorded before writing).
  """
  from jaxcloak import targets as targets_lib
  t0 = time.perf_counter()
  config = cloaker.config
  live = [t for t in tasks if t.item.photo is not None and t.item.faces and t.item.status == "pending"]
  new: dict[str, str | None] = {}
  face_targets: dict[int, dict] = {}
  if config.mode == "targeted":
    if pool is None:
      raise MigrateError("targeted mode needs a target pool (--pool DIR)")
    by_user: dict[str, list] = {}
    for t in live:
      by_user.setdefault(t.user, []).append(t.item)
    for user, items in by_user.items():
      if user in targets:
        name = targets[user]
      else:
        feats = cloaker.identity_features(items)
        name = None
        if len(next(iter(feats.values()))):
          name = targets_lib.choose_target(
              feats, pool, extractors=config.extractors, weights=config.weights,
              choice=config.target_choice, top_k=config.target_top_k, seed=config.seed,
              exclude=(user,)).name
        new[user] = name
      tgt = target_by_name(pool, name, config.extractors) if name else None
      for it in items:
        for f in it.faces:
          if tgt is not None:
            face_targets[id(f)] = tgt.features
          elif f.status == "pending":
            f.status = "no_target"
  cloaker.cloak_items([t.item for t in live], face_targets)
  share = (time.perf_counter() - t0) / max(1, len(live))
  for t in live:
    t.seconds += share
  return new


def result_of(task: Task, *, target: str | None = None) -> tuple[dict, bytes]:
  """The manifest record (less output fields) and output bytes for a computed task."""
  it = task.item
  status = it.status if it.status != "pending" else "no_face"
  faces = list(it.faces)
  dssims = [f.stats["dssim"] for f in faces if f.status == "cloaked" and "dssim" in f.stats]
  if status != "cloaked":
    dssims = []
  notes = list(task.notes) + (list(it.photo.notes) if it.photo is not None else [])
  rec = {
      "input": task.rel, "user": task.user, "size": task.size, "sha256": task.sha256,
      "status": status, "message": it.message or None, "faces": len(faces),
      "face_status": dict(collections.Counter(f.status for f in faces)),
      "dssim": round(max(dssims), 6) if dssims else None,
      "dssim_mean": round(float(np.mean(dssims)), 6) if dssims else None,
      "target": target if status == "cloaked" else None,
      "notes": notes, "seconds": round(task.seconds, 3), "mode": task.mode}
  data = it.output if (status == "cloaked" and it.output is not None) else task.data
  return rec, data


def error_results(tasks: Sequence[Task], err: BaseException) -> list[tuple[dict, bytes]]:
  """Inputs copied unchanged with status `error` (not final: a rerun retries them)."""
  msg = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
  return [({"input": t.rel, "user": t.user, "size": t.size, "sha256": t.sha256,
            "status": "error", "message": f"{t.rel}: processing failed ({msg}); copied "
            "unchanged, retried on the next run", "faces": 0, "notes": t.notes,
            "seconds": 0.0, "mode": t.mode}, t.data) for t in tasks]


def process_chunk(cloaker, tasks: Sequence[Task], *, targets: dict, pool=None,
                  max_faces: int = 64) -> tuple[list[tuple[dict, bytes]], dict]:
  """Both stages in-process: (records + bytes, newly chosen targets)."""
  prepare(cloaker, tasks, max_faces=max_faces)
  new = cloak_stage(cloaker, tasks, targets=targets, pool=pool)
  all_targets = {**targets, **new}
  return [result_of(t, target=all_targets.get(t.user)) for t in tasks], new


# -- the job (driver side: walk, resume, write, record) ----------------------------


class Progress:
  """tqdm bar with photos/s and ETA on a terminal; periodic log lines otherwise."""

  def __init__(self, total: int | None, *, tty: bool, log: Callable[[str], None],
               every: float = 30.0):
    self.total, self.log, self.every = total, log, every
    self.n = 0
    self.t0 = self.last = time.time()
    self.bar = None
    if tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True)

  def update(self, n: int, counts: dict) -> None:
    self.n += n
    if self.bar is not None:
      self.bar.update(n)
      return
    now = time.time()
    if now - self.last >= self.every:
      self.last = now
      rate = self.n / max(now - self.t0, 1e-9)
      eta = ""
      if self.total and rate > 0:
        eta = f", ETA {_fmt_secs((self.total - self.n) / rate)}"
      of = f"/{self.total}" if self.total else ""
      self.log(f"migrate: {self.n}{of} inputs, {rate:.2f} photos/s{eta}; "
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))

  def write(self, msg: str) -> None:
    if self.bar is not None:
      self.bar.write(msg)
    else:
      self.log(msg)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _fmt_secs(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _jsonable(x):
  return json.loads(json.dumps(x, default=list))


class Job:
  """Driver-side state of one migration: what is done, what to compute, how to record it."""

  def __init__(self, src: Path, dst: Path, config, options: Options = Options(), *,
               log: Callable[[str], None] = print):
    self.src, self.dst = Path(src), Path(dst)
    self.config, self.options, self.log = config, options, log
    if not self.src.exists():
      raise MigrateError(f"{self.src}: no such folder or archive")
    rs, rd = self.src.resolve(), self.dst.resolve()
    if rd == rs or rd.is_relative_to(rs) or (self.src.is_dir() and rs.is_relative_to(rd)):
      raise MigrateError("DST must be outside SRC and SRC outside DST (SRC is never written)")
    self.meta = self.dst / META_DIR
    self.meta.mkdir(parents=True, exist_ok=True)
    self.state = State(self.meta / "state.json")
    recorded = {"config": _jsonable(dataclasses.asdict(config)), "options": options.recorded()}
    if self.state.data["config"] is None:
      self.state.data.update(recorded, src=str(rs))
      self.state.save()
    else:
      for k, v in recorded.items():
        if self.state.data.get(k) != v:
          diff = {f: (self.state.data[k].get(f), v.get(f)) for f in v
                  if self.state.data[k].get(f) != v.get(f)}
          raise MigrateError(f"{self.dst} holds a job started with other settings "
                             f"(recorded, given): {diff}; rerun with the same settings or use "
                             "a new DST")
    self.manifest = Manifest(self.meta / "manifest.jsonl")
    self.done = self.manifest.load()
    # input sha256 -> record of an earlier input with the same bytes and an output.
    self.by_sha = {r["sha256"]: r for r in self.done.values()
                   if r.get("sha256") and r.get("output") and r["status"] not in ("duplicate", "error")}
    self.inflight: dict[str, str] = {}  # sha256 -> rel of a task being computed
    self.deferred: dict[str, list] = {}  # sha256 -> duplicates waiting for it
    self.counts: collections.Counter = collections.Counter()
    self.skipped = 0
    self.n_faces = 0
    self.dssims: list[float] = []
    self.progress: Progress | None = None
    self._clean_partials()

  def _clean_partials(self) -> None:
    """Removes temp files a killed run left behind (never a recorded output)."""
    outputs = {r["output"] for r in self.done.values() if r.get("output")}
    for d, _, files in os.walk(self.dst):
      for f in files:
        p = Path(d) / f
        if _PART_RE.match(f) and p.relative_to(self.dst).as_posix() not in outputs:
          p.unlink(missing_ok=True)

  def user_of(self, rel: str) -> str:
    if self.options.user:
      return self.options.user
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else ""

  def is_done(self, entry: Entry) -> bool:
    rec = self.done.get(entry.rel)
    if rec is None:
      return False
    if entry.status is not None:
      return rec["status"] == entry.status
    if rec["status"] in ("error", "write_failed"):
      return False
    if entry.size is not None and rec.get("size") is not None and rec["size"] != entry.size:
      return False
    if not rec.get("output"):
      return True  # e.g. unreadable: final; delete its record to retry it
    out = self.dst / rec["output"]
    try:
      return out.stat().st_size == rec["size_out"] and sha256_file(out) == rec["sha256_out"]
    except (OSError, KeyError):
      return False

  # -- recording -------------------------------------------------------------

  def record(self, rec: dict, data: bytes | None) -> None:
    """Writes the output (atomic rename), then its manifest record (fsync)."""
    mode = rec.pop("mode", None)  # the output's, not the manifest's
    if data is not None:
      try:
        atomic_write(self.dst / rec["input"], data, mode)
      except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
          raise  # the disk, not the photo: stop; a rerun resumes here
        # e.g. archive members "a" and "a/b": the path cannot exist in DST.
        rec.update(status="write_failed", output=None, message=(
            f"{rec['input']}: cannot be written to DST ({e.strerror}); retried on the next run"))
        self._append(rec)
        for dup in self.deferred.pop(rec.get("sha256"), []):
          self._append({**error_results([dup], e)[0][0], "output": None})
        return
      rec.update(output=rec["input"], size_out=len(data), sha256_out=sha256_bytes(data))
    else:
      rec.setdefault("output", None)
    self._append(rec)
    sha = rec.get("sha256")
    if data is not None and rec["status"] != "duplicate" and sha:
      self.inflight.pop(sha, None)
      if rec["status"] == "error":  # same bytes, same failure: copy and retry next run
        for dup in self.deferred.pop(sha, []):
          self.record(error_results([dup], RuntimeError(f"as {rec['input']}"))[0][0], data)
        return
      self.by_sha.setdefault(sha, rec)
      for dup in self.deferred.pop(sha, []):
        self.duplicate(dup, rec)

  def _append(self, rec: dict) -> None:
    rec.pop("mode", None)  # an output's permission bits are on the file, not in the manifest
    self.manifest.append(rec)
    self.done[rec["input"]] = rec
    self.counts[rec["status"]] += 1
    self.n_faces += rec.get("faces") or 0
    if rec["status"] == "cloaked" and rec.get("dssim_mean") is not None:
      self.dssims.extend([rec["dssim_mean"]] * rec["face_status"].get("cloaked", 0))
    if rec.get("message") and rec["status"] not in ("cloaked", "no_face"):
      (self.progress.write if self.progress else self.log)(rec["message"])
    if self.progress:
      self.progress.update(1, self.counts)

  def duplicate(self, task: Task, original: dict) -> None:
    """An input with the same bytes as one already migrated: its output is reused."""
    out = self.dst / original["output"]
    try:
      data = out.read_bytes()
    except OSError:
      data = None
    if data is None or sha256_bytes(data) != original["sha256_out"]:
      return self.compute_later(task)  # original output gone: compute this one on its own
    rec = {"input": task.rel, "user": task.user, "size": task.size, "sha256": task.sha256,
           "status": "duplicate", "duplicate_of": original["input"],
           "original_status": original["status"],
           "message": f"{task.rel}: same bytes as {original['input']}; its output was reused",
           "faces": original.get("faces", 0), "face_status": original.get("face_status", {}),
           "dssim": original.get("dssim"), "dssim_mean": original.get("dssim_mean"),
           "target": original.get("target"), "notes": task.notes, "seconds": 0.0,
           "mode": task.mode}
    self.record(rec, data)

  def compute_later(self, task: Task) -> None:
    self._retry.append(task)

  # -- producing work -----------------------------------------------------------

  def tasks(self) -> Iterator[Task]:
    """Walks SRC; records what needs no compute; yields the photos to compute."""
    self._retry: list[Task] = []
    opts = self.options
    for entry in walk(self.src, exclude=[self.dst]):
      if entry.rel.split("/")[0] == META_DIR and entry.status is None:
        entry.status, entry.message = "reserved_name", f"{entry.rel}: {META_DIR}/ is reserved for the manifest; not migrated"
      if self.is_done(entry):
        self.skipped += 1
        if self.progress:
          self.progress.update(1, self.counts)
        continue
      user = self.user_of(entry.rel)
      if entry.status is not None:
        self._append({"input": entry.rel, "user": user, "size": entry.size, "sha256": None,
                      "status": entry.status, "message": entry.message, "faces": 0,
                      "notes": entry.notes, "output": None})
        continue
      if entry.size is not None and entry.size > opts.max_file_bytes:
        self._copy_large(entry, user)
        continue
      try:
        with entry.open() as f:
          data = f.read()
      except (OSError, RuntimeError, zipfile.BadZipFile) as e:
        msg = getattr(e, "strerror", None) or str(e)
        self._append({"input": entry.rel, "user": user, "size": entry.size, "sha256": None,
                      "status": "unreadable", "message": f"{entry.rel}: cannot be read ({msg})",
                      "faces": 0, "notes": entry.notes, "output": None})
        continue
      task = Task(entry.rel, user, len(data), sha256_bytes(data), data, list(entry.notes),
                  mode=entry.mode)
      if task.sha256 in self.by_sha:
        self.duplicate(task, self.by_sha[task.sha256])
      elif task.sha256 in self.inflight:
        task.data = b""  # the original's output will be copied; don't hold the bytes
        self.deferred.setdefault(task.sha256, []).append(task)
      else:
        self.inflight[task.sha256] = task.rel
        yield task
      while self._retry:
        t = self._retry.pop()
        self.inflight[t.sha256] = t.rel
        yield t

  def _copy_large(self, entry: Entry, user: str) -> None:
    """Stream-copies a file too large to decode (hashing as it goes)."""
    import hashlib
    out = self.dst / entry.rel
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    try:
      with entry.open() as f, atomic_file(out, entry.mode) as g:
        while block := f.read(1 << 20):
          h.update(block)
          g.write(block)
          size += len(block)
    except OSError as e:
      self._append({"input": entry.rel, "user": user, "size": entry.size, "sha256": None,
                    "status": "unreadable", "message": f"{entry.rel}: cannot be read ({e})",
                    "faces": 0, "notes": entry.notes, "output": None})
      return
    digest = h.hexdigest()
    self._append({"input": entry.rel, "user": user, "size": size, "sha256": digest,
                  "status": "too_large_file", "faces": 0, "notes": entry.notes,
                  "message": f"{entry.rel}: {size:,} bytes is over the {self.options.max_file_bytes:,}"
                             "-byte limit for decoding; copied unchanged",
                  "output": entry.rel, "size_out": size, "sha256_out": digest})

  def chunks(self, tasks: Iterable[Task]) -> Iterator[list[Task]]:
    """Groups tasks so a chunk holds at most `chunk` photos, bytes and pixels."""
    from PIL import Image
    import io
    opts = self.options
    chunk, nbytes, npix = [], 0, 0
    for t in tasks:
      try:
        with Image.open(io.BytesIO(t.data)) as im:
          pix = im.size[0] * im.size[1]
      except Exception:
        pix = 0
      if chunk and (len(chunk) >= opts.chunk or nbytes + t.size > opts.chunk_bytes
                    or npix + pix > opts.chunk_pixels):
        yield chunk
        chunk, nbytes, npix = [], 0, 0
      chunk.append(t)
      nbytes += t.size
      npix += pix
    if chunk:
      yield chunk

  def save_targets(self, new: dict) -> None:
    if new:
      self.state.targets.update(new)
      self.state.save()

  def write_results(self, results: Sequence[tuple[dict, bytes]]) -> None:
    for rec, data in results:
      self.record(rec, data)

  def summary(self, seconds: float) -> dict:
    computed = sum(self.counts.values())
    return {"src": str(self.src), "dst": str(self.dst), "inputs": computed + self.skipped,
            "migrated_now": computed, "already_done": self.skipped,
            "by_status": dict(sorted(self.counts.items())), "faces": self.n_faces,
            "faces_cloaked": len(self.dssims),
            "mean_dssim": round(float(np.mean(self.dssims)), 6) if self.dssims else None,
            "seconds": round(seconds, 2),
            "photos_per_s": round(computed / seconds, 3) if seconds > 0 else None,
            "manifest": str(self.manifest.path)}

  def finish(self, seconds: float) -> dict:
    self.manifest.close()
    if self.progress:
      self.progress.close()
    self.state.data["finished"] = True
    self.state.save()
    s = self.summary(seconds)
    if s["migrated_now"] == 0:
      s["nothing_to_do"] = True
      self.log(f"nothing to do: all {s['already_done']} inputs of {self.src} are already "
               f"migrated to {self.dst} (manifest {self.manifest.path})")
    return s


def migrate(src: Path, dst: Path, config, *, options: Options = Options(),
            make_cloaker: Callable[[], object] | None = None, pool_dir: Path | None = None,
            pool=None, progress: bool | None = None, log: Callable[[str], None] = print,
            log_every: float = 30.0) -> dict:
  """Migrates SRC into DST in-process; returns the run's summary.

  Args:
    make_cloaker: builds the Cloaker (called only if some photo needs computing).
    pool_dir: target pool (identity folders), needed in targeted mode.
    pool: or its precomputed `targets.IdentityFeatures`.
    progress: a tqdm bar (True), log lines (False), or by whether stderr is a terminal.
  """
  t0 = time.time()
  job = Job(src, dst, config, options, log=log)
  tty = sys.stderr.isatty() if progress is None else progress
  job.progress = Progress(count_entries(job.src), tty=tty, log=log, every=log_every)
  cloaker = None
  for chunk in job.chunks(job.tasks()):
    if cloaker is None:
      cloaker = make_cloaker() if make_cloaker else _default_cloaker(config)
      set_detect_side(cloaker, options.detect_side)
      if config.mode == "targeted" and pool is None:
        pool = _pool(cloaker, pool_dir, log)
    for results, new in _isolating_failures(cloaker, chunk, job.state.targets, pool, options):
      job.save_targets(new)  # before any output that used them
      job.write_results(results)
  return job.finish(time.time() - t0)


def _isolating_failures(cloaker, chunk, targets, pool, options):
  """Processes a chunk; if it fails, each photo alone, so one bad photo fails alone."""
  notes = [list(t.notes) for t in chunk]
  try:
    yield process_chunk(cloaker, chunk, targets=targets, pool=pool, max_faces=options.max_faces)
    return
  except MigrateError:
    raise
  except Exception:
    if len(chunk) == 1:
      yield error_results(chunk, sys.exc_info()[1]), {}
      return
  for t, n in zip(chunk, notes):
    t.notes, t.seconds = n, 0.0
    try:
      yield process_chunk(cloaker, [t], targets=targets, pool=pool, max_faces=options.max_faces)
    except MigrateError:
      raise
    except Exception as e:  # an engine bug must not stop the archive: copy, record, go on
      yield error_results([t], e), {}


def set_detect_side(cloaker, side: int | None) -> None:
  from jaxcloak.faces import detect
  cloaker.detector.max_side = side or detect.MAX_SIDE


def _default_cloaker(config):
  from jaxcloak.pipeline.cloaker import Cloaker
  return Cloaker(config)


def _pool(cloaker, pool_dir, log):
  from jaxcloak.pipeline.local import pool_features
  if pool_dir is None:
    raise MigrateError("targeted mode needs a target pool (--pool DIR); or use --mode untargeted")
  return pool_features(cloaker, Path(pool_dir), log=log)


# -- command line ------------------------------------------------------------------

def add_parser(subparsers) -> argparse.ArgumentParser:
  """Adds the `migrate` subcommand."""
  p = subparsers.add_parser(
      "migrate", help="cloak a whole archive (folder, .zip or .tar) into DST, resumably",
      description=__doc__.split("\n\n")[0])
  p.add_argument("src", type=Path, help="folder, .zip or .tar(.gz) archive (only read)")
  p.add_argument("dst", type=Path, help="output folder (same layout; manifest in DST/.jaxcloak)")
  p.add_argument("--pool", type=Path, help="target pool: folder of identity subfolders")
  p.add_argument("--user", help="one user id for all photos (default: top-level folder)")
  flags.add_cloak_flags(p)
  p.add_argument("--strip-metadata", action="store_true")
  p.add_argument("--check", action="store_true",
                 help="afterwards, judge every output with every ported recognizer (as `jaxcloak "
                      "check`; report and contact sheets in DST/.jaxcloak/check)")
  p.add_argument("--chunk", type=int, default=Options.chunk, help="photos per chunk")
  p.add_argument("--chunk-mb", type=int, default=Options.chunk_bytes >> 20)
  p.add_argument("--max-file-mb", type=int, default=Options.max_file_bytes >> 20,
                 help="larger files are copied unchanged without decoding")
  p.add_argument("--max-pixels", type=int, default=photo_io.MAX_PIXELS,
                 help="decompression-bomb guard")
  p.add_argument("--max-faces", type=int, default=Options.max_faces)
  p.add_argument("--detect-side", type=int, help="detector long-side cap (default 640; "
                 "larger photos are shrunk to it for detection)")
  p.add_argument("--weights-dir")
  compile_cache.add_flag(p)
  p.add_argument("--ray", metavar="ADDRESS",
                 help="run on a Ray cluster ('auto' = the cluster this node belongs to)")
  p.add_argument("--ray-cloak-actors", type=int, help="cloak actors (default: one per GPU, "
                 "or 2 on a CPU-only cluster)")
  p.add_argument("--log-every", type=float, default=30.0, help="seconds between log lines "
                 "when stderr is not a terminal")
  p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
  return p


def options_from_args(args) -> Options:
  return Options(user=args.user, chunk=args.chunk, chunk_bytes=args.chunk_mb << 20,
                 max_file_bytes=args.max_file_mb << 20, max_faces=args.max_faces,
                 detect_side=args.detect_side)


def run(args) -> int:
  """Runs `jaxcloak migrate`; prints the summary as one JSON line."""
  if args.mode is None and args.pool is None:
    args.mode = "untargeted"
    print("no --pool given: using the untargeted objective", file=sys.stderr)
  try:
    config = flags.config_from_flags(args)
  except (ValueError, KeyError) as e:
    print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
    return 2
  options = options_from_args(args)
  log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

  def make_cloaker():
    from jaxcloak.pipeline.cloaker import Cloaker
    return Cloaker(config, weights_dir=args.weights_dir, strip_metadata=args.strip_metadata,
                   max_pixels=args.max_pixels)

  try:
    if args.ray:
      from jaxcloak.pipeline import ray_runner
      summary = ray_runner.migrate(
          args.src, args.dst, config, options=options, address=args.ray,
          cloak_actors=args.ray_cloak_actors, weights_dir=args.weights_dir,
          strip_metadata=args.strip_metadata, max_pixels=args.max_pixels, pool_dir=args.pool,
          compile_cache=args.compile_cache and str(args.compile_cache),
          progress=False if args.quiet else None, log=log,
          log_every=args.log_every)
    else:
      summary = migrate(args.src, args.dst, config, options=options, make_cloaker=make_cloaker,
                        pool_dir=args.pool, progress=False if args.quiet else None, log=log,
                        log_every=args.log_every)
  except MigrateError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.check:
    summary["check"] = _check(args, config, log)
  print(json.dumps(summary), flush=True)
  return 0


def _check(args, config, log) -> dict:
  """`--check`: every ported recognizer's verdict on DST's photos (folder SRC only)."""
  from jaxcloak import protection
  if not Path(args.src).is_dir():
    log("--check: SRC is an archive; run `jaxcloak check` on an extracted copy")
    return {"skipped": "archive SRC"}
  result = protection.check(args.src, args.dst, Path(args.dst) / META_DIR / "check",
                       cloaked_with=config.extractors, weights_dir=args.weights_dir)
  log(protection.table(result))
  return {k: result[k] for k in ("models", "statuses", "sheets", "out")}


def main(argv=None) -> int:
  from jaxcloak.cli import main as cli_main  # the same parser and setup as `jaxcloak migrate`
  return cli_main(argv)


if __name__ == "__main__":
  sys.exit(main(["migrate", *sys.argv[1:]]))
