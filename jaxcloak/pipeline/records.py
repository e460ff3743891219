"""What flows through the stages: a photo (`Item`) and its faces (`Face`), and in a
migration the `Task` that carries an item from its source to its manifest record."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from jaxcloak.faces import io as photo_io
from jaxcloak.faces import regions as regions_lib


@dataclasses.dataclass
class Face:
  box: list  # x, y, w, h in photo pixels
  score: float
  landmarks: np.ndarray  # [5, 2]
  region: regions_lib.Region | None = None
  status: str = "pending"  # cloaked | too_small | not_improved | over_cap | no_target
  cloaked_patch: np.ndarray | None = None
  strength: float = 1.0
  stats: dict = dataclasses.field(default_factory=dict)
  jpeg: tuple | None = None  # (luma, chroma, subsampling code, on) the output is encoded with

  @property
  def area(self) -> float:
    return self.box[2] * self.box[3]


@dataclasses.dataclass
class Item:
  """One photo through the pipeline."""
  name: str  # relative output path
  data: bytes
  user: str = ""
  photo: photo_io.Photo | None = None
  faces: list = dataclasses.field(default_factory=list)
  status: str = "pending"
  message: str = ""
  output: bytes | None = None
  output_format: str = ""
  written_rgb: np.ndarray | None = None  # the written file, re-decoded (write_back sets it)
  notes: list = dataclasses.field(default_factory=list)  # what the record should say

  def main_face(self) -> Face | None:
    """The face the photo is about: the largest."""
    return max(self.faces, key=lambda f: f.area) if self.faces else None


@dataclasses.dataclass
class Task:
  """One input of a migration: where its bytes are, and the Item computed from them."""
  rel: str
  user: str
  size: int
  sha256: str | None
  data: bytes | None  # None until read (a Ray worker reads it from `locator`)
  notes: list = dataclasses.field(default_factory=list)
  item: Item | None = None  # built by stages.prepare
  seconds: float = 0.0
  mode: int | None = None  # the source's permission bits (Entry.mode)
  locator: tuple | None = None  # sources.Entry.locator
  final: dict | None = None  # its record, when reading it decided it (unreadable, too large)


def result_of(task: Task, *, target: str | None = None) -> tuple[dict, bytes]:
  """The manifest record (less output fields) and output bytes for a computed task."""
  it = task.item
  status = it.status if it.status != "pending" else "no_face"
  faces = list(it.faces)
  dssims = [f.stats["dssim"] for f in faces if f.status == "cloaked" and "dssim" in f.stats]
  if status != "cloaked":
    dssims = []
  notes = list(task.notes) + list(it.notes) + (list(it.photo.notes) if it.photo is not None else [])
  rec = {
      "input": task.rel, "user": task.user, "size": task.size, "sha256": task.sha256,
      "status": status, "message": it.message or None, "faces": len(faces),
      "face_status": dict(collections.Counter(f.status for f in faces)),
      "dssim": round(max(dssims), 6) if dssims else None,
      "dssim_mean": round(float(np.mean(dssims)), 6) if dssims else None,
      "target": target if status == "cloaked" else None,
      # scope="person": which person each face joined (None: not grouped).
      "persons": [f.stats.get("person") for f in faces] if any("person" in f.stats
                                                               for f in faces) else None,
      "notes": notes, "seconds": round(task.seconds, 3), "mode": task.mode}
  if rec["persons"] and status == "cloaked":  # scope="person": each person has their target
    rec["target"] = it.main_face().stats.get("target")
  data = it.output if (status == "cloaked" and it.output is not None) else task.data
  return rec, data


def error_results(tasks: Sequence[Task], err: BaseException, *,
                  copied: bool = True) -> list[tuple[dict, bytes | None]]:
  """Inputs with status `error` (not final: a rerun retries them), copied unchanged
  unless `copied` is False (their bytes were never here)."""
  msg = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
  what = "copied unchanged" if copied else "not written"
  return [({"input": t.rel, "user": t.user, "size": t.size, "sha256": t.sha256,
            "status": "error", "message": f"{t.rel}: processing failed ({msg}); {what}, "
            "retried on the next run", "faces": 0, "notes": t.notes,
            "seconds": 0.0, "mode": t.mode}, t.data if copied else None) for t in tasks]
