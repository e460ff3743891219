"""The resumable job: what is done, what to compute, and how each result is recorded.

DST gets the same relative layout as SRC: the cloaked photo where faces were
cloaked, an exact copy of the input otherwise. SRC is only ever read. Every
input gets one record in `DST/.jaxcloak/manifest.jsonl` (see `manifest.py`),
written after its output is atomically renamed into place; that manifest is
the truth on resume: an input is skipped only if its record is final and its
output still has the recorded sha256. Each user's target (user = top-level
folder, or `--user`) is chosen once, saved in `DST/.jaxcloak/state.json` before
any photo of that user is written, and reused by every later run. Inputs with
the same bytes are computed once; the others reuse the first one's output.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from jaxcloak.config import EngineSettings
from jaxcloak.paths import OverlapError, refuse_overlap
from jaxcloak.pipeline.destination import META_DIR, Destination
from jaxcloak.pipeline.manifest import State, sha256_bytes
from jaxcloak.pipeline.outputs import READ_ERRORS, copy_large, unreadable, write_output
from jaxcloak.pipeline.records import Task, error_results
from jaxcloak.pipeline.sources import (Entry, SourceError, is_url, local_path,
                                       url_filesystem, walk)
from jaxcloak.pipeline.stages import MAX_FACES, StageError



class MigrateError(ValueError):
  """A job that cannot start (bad paths, settings differing from the recorded job)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How the inputs are walked and chunked (the cloak itself is a CloakConfig, the
  engine's settings an EngineSettings)."""
  user: str | None = None  # one user id for every photo; default: top-level folder
  chunk: int = 32  # photos per chunk
  chunk_bytes: int = 256 << 20  # input bytes per chunk
  chunk_pixels: int = 256_000_000  # decoded pixels per chunk (header estimate)
  max_file_bytes: int = 256 << 20  # larger files are stream-copied, never decoded
  max_faces: int = MAX_FACES  # faces cloaked per photo (largest first); the rest are reported

  def __post_init__(self):
    for name in ("chunk", "chunk_bytes", "chunk_pixels", "max_file_bytes", "max_faces"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def recorded_options(options: Options, settings: EngineSettings) -> dict:
  """The settings besides the config that change outputs, so must match across runs of
  one job (kept in state.json under "options")."""
  return {"user": options.user, "max_faces": options.max_faces,
          "detect_side": settings.detect_side}


@dataclasses.dataclass
class Tally:
  """What a run's summary counts: inputs by status, faces, the cloaked faces' DSSIM."""
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  faces: int = 0
  dssims: list = dataclasses.field(default_factory=list)

  def add(self, status: str, faces: int = 0, dssims: Sequence[float] = ()) -> None:
    self.counts[status] += 1
    self.faces += faces
    self.dssims.extend(dssims)

  def summary(self) -> dict:
    return {"by_status": dict(sorted(self.counts.items())), "faces": self.faces,
            "faces_cloaked": len(self.dssims),
            "mean_dssim": round(float(np.mean(self.dssims)), 6) if self.dssims else None}


def chunked(tasks: Iterable[Task], options: Options) -> Iterator[list[Task]]:
  """Groups tasks in order so a chunk holds at most `chunk` photos, bytes and pixels."""
  from PIL import Image
  import io
  chunk, nbytes, npix = [], 0, 0
  for t in tasks:
    pix = 0
    if t.data is not None:  # unread inputs are bounded by count and bytes only
      try:
        with Image.open(io.BytesIO(t.data)) as im:
          pix = im.size[0] * im.size[1]
      except Exception:
        pass
    if chunk and (len(chunk) >= options.chunk or nbytes + (t.size or 0) > options.chunk_bytes
                  or npix + pix > options.chunk_pixels):
      yield chunk
      chunk, nbytes, npix = [], 0, 0
    chunk.append(t)
    nbytes += t.size or 0
    npix += pix
  if chunk:
    yield chunk


# Mistakes that stop a job before or while it runs (a person can fix them).
JOB_ERRORS = (MigrateError, OverlapError, SourceError, StageError)


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
               settings: EngineSettings = EngineSettings(),
               log: Callable[[str], None] = print):
    # SRC and DST: local paths, or fsspec URLs whose objects workers read and write.
    self.src = str(src) if is_url(str(src)) else Path(src)
    try:
      self.dst = Destination(dst)
    except SourceError as e:
      raise MigrateError(str(e)) from None
    self.config, self.options, self.settings, self.log = config, options, settings, log
    if isinstance(self.src, str):
      fs, root = url_filesystem(self.src)
      if not fs.isdir(root):
        raise MigrateError(f"{self.src}: no such folder (prefix) of objects")
      src_path = local_path(fs, root)  # only a file:// URL can overlap DST
    elif not self.src.exists():
      raise MigrateError(f"{self.src}: no such folder or archive")
    else:
      src_path = self.src
    dst_path = self.dst.local_folder()
    if src_path is not None and dst_path is not None:
      refuse_overlap(dst_path, [src_path], what="DST")
    rs = src_path.resolve() if src_path is not None else None
    if self.dst.is_taken():
      raise MigrateError(f"{self.dst}: is a file; DST must be a folder (created if missing)")
    self.dst.prepare()
    self.state = State(lambda: self.dst.read_meta("state.json"),
                       lambda data: self.dst.write_meta("state.json", data))
    recorded = {"config": _jsonable(dataclasses.asdict(config)),
                "options": recorded_options(options, settings)}
    if self.state.data["config"] is None:
      self.state.data.update(recorded, src=str(rs or self.src))
      self.state.save()
    else:
      for k, v in recorded.items():
        if self.state.data.get(k) != v:
          diff = {f: (self.state.data[k].get(f), v.get(f)) for f in v
                  if self.state.data[k].get(f) != v.get(f)}
          raise MigrateError(f"{self.dst} holds a job started with other settings "
                             f"(recorded, given): {diff}; rerun with the same settings or use "
                             "a new DST")
    self.manifest = self.dst.manifest()
    self.done = self.manifest.load()
    # input sha256 -> record of an earlier input with the same bytes and an output.
    self.by_sha = {r["sha256"]: r for r in self.done.values()
                   if r.get("sha256") and r.get("output") and r["status"] not in ("duplicate", "error")}
    self.inflight: dict[str, str] = {}  # sha256 -> rel of a task being computed
    self.deferred: dict[str, list] = {}  # sha256 -> duplicates waiting for it
    self.tally = Tally()
    self.skipped = 0
    self.progress: Progress | None = None
    self._clean_partials()

  def _clean_partials(self) -> None:
    """Removes temp files a killed run left behind (never a recorded output)."""
    self.dst.remove_partials({r["output"] for r in self.done.values() if r.get("output")})

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
    if "size_out" not in rec or "sha256_out" not in rec:
      return False
    return self.dst.holds(rec["output"], rec["size_out"], rec["sha256_out"])

  # -- recording -------------------------------------------------------------

  def record(self, rec: dict, data: bytes | None) -> None:
    """Writes the output (atomic rename), then its manifest record (fsync)."""
    mode = rec.pop("mode", None)  # the output's, not the manifest's
    if data is not None:
      if not write_output(self.dst, rec, data, mode):
        self._append(rec)
        for dup in self.deferred.pop(rec.get("sha256"), []):
          self._append({**error_results([dup], OSError(rec["message"]))[0][0], "output": None})
        return
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

  def _append(self, rec: dict, *, sync: bool = True) -> None:
    rec.pop("mode", None)  # an output's permission bits are on the file, not in the manifest
    self.manifest.append(rec, sync=sync)
    self.done[rec["input"]] = rec
    cloaked = rec["status"] == "cloaked" and rec.get("dssim_mean") is not None
    self.tally.add(rec["status"], rec.get("faces") or 0,
                   [rec["dssim_mean"]] * rec["face_status"].get("cloaked", 0) if cloaked else [])
    if rec.get("message") and rec["status"] not in ("cloaked", "no_face"):
      (self.progress.write if self.progress else self.log)(rec["message"])
    if self.progress:
      self.progress.update(1, self.tally.counts)

  def duplicate(self, task: Task, original: dict, data: bytes | None = None) -> None:
    """An input with the same bytes as one already migrated: its output is reused."""
    if data is None:
      data = self.dst.read(original["output"])
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

  def tasks(self, *, read: bool = True) -> Iterator[Task]:
    """Walks SRC; records what needs no compute; yields the photos to compute.

    Args:
      read: read each input here (and hash it: identical inputs are computed
        once). With read=False, an input with a locator is yielded unread, for
        a worker to read, hash and write itself (`record_written`).
    """
    self._retry: list[Task] = []
    opts = self.options
    for entry in walk(self.src, exclude=[p for p in [self.dst.local_folder()] if p]):
      if entry.rel.split("/")[0] == META_DIR and entry.status is None:
        entry.status, entry.message = "reserved_name", f"{entry.rel}: {META_DIR}/ is reserved for the manifest; not migrated"
      if self.is_done(entry):
        self.skipped += 1
        if self.progress:
          self.progress.update(1, self.tally.counts)
        continue
      user = self.user_of(entry.rel)
      if entry.status is not None:
        self._append({"input": entry.rel, "user": user, "size": entry.size, "sha256": None,
                      "status": entry.status, "message": entry.message, "faces": 0,
                      "notes": entry.notes, "output": None})
        continue
      if entry.size is not None and entry.size > opts.max_file_bytes:
        self._append(copy_large(entry.open, self.dst, entry.rel, user, entry.size, entry.notes,
                                entry.mode, opts.max_file_bytes))
        continue
      if not read and entry.locator is not None:
        yield Task(entry.rel, user, entry.size, None, None, list(entry.notes), mode=entry.mode,
                   locator=entry.locator)
        continue
      try:
        with entry.open() as f:
          data = f.read()
      except READ_ERRORS as e:
        self._append(unreadable(entry.rel, user, entry.size, entry.notes, e))
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

  def chunks(self, tasks: Iterable[Task]) -> Iterator[list[Task]]:
    return chunked(tasks, self.options)

  def save_targets(self, new: dict) -> None:
    if new:
      self.state.targets.update(new)
      self.state.save()

  def record_written(self, rec: dict, *, sync: bool = True) -> None:
    """Records an output a worker wrote itself; an input whose bytes an earlier one had
    becomes its duplicate (the earlier output is copied over the worker's), as here.
    With sync=False the caller syncs the manifest after the group (`manifest.sync`)."""
    sha = rec.get("sha256")
    original = self.by_sha.get(sha) if sha and rec["status"] not in ("error", "write_failed") else None
    if original is not None and original["input"] != rec["input"]:
      task = Task(rec["input"], rec["user"], rec["size"], sha, None, rec.get("notes", []),
                  mode=rec.get("mode"))
      data = self.dst.read(original["output"])
      if data is not None and sha256_bytes(data) == original["sha256_out"]:
        return self.duplicate(task, original, data)
    self._append(rec, sync=sync)
    if rec.get("output") and sha and rec["status"] not in ("duplicate", "error"):
      self.by_sha.setdefault(sha, rec)

  def write_results(self, results: Sequence[tuple[dict, bytes]]) -> None:
    for rec, data in results:
      self.record(rec, data)

  def summary(self, seconds: float) -> dict:
    computed = sum(self.tally.counts.values())
    return {"src": str(self.src), "dst": str(self.dst), "inputs": computed + self.skipped,
            "migrated_now": computed, "already_done": self.skipped, **self.tally.summary(),
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
