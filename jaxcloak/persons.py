"""People in a user's photos, and the one cloak each of them gets (scope="person").

Faces are grouped by who they show: a face joins the nearest known person
whose centroid is within the ensemble's same-person threshold, else it starts
a new person. Distances are each member's squared unit-sphere distance in
units of its own same-person threshold, weighted like the cloak's ensemble,
so 1.0 means "at the threshold" whatever the models.

A person's cloak (the search variable of `optimize.person_noise`, in the
canonical face frame) is kept with their centroid in a `Book`, one file per
user (`persons/<user>.npz` in the job's metadata folder), so a later batch of
the same person's photos gets the same cloak without a new search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcloak.config import CloakConfig
from jaxcloak.files import atomic_write

FORMAT = "jaxcloak-person-cloaks"
FORMAT_VERSION = 1
# A group whose member pairs are over the threshold this often is reported as
# possibly several people (two look-alikes, or a chain of near matches).
MIXED_PAIR_SHARE = 0.25


class PersonCloakError(ValueError):
  """A saved person-cloak file that cannot be used (damaged, or made otherwise)."""


@dataclasses.dataclass
class Person:
  key: str  # "p0", "p1", ... within its user
  centroid: dict[str, np.ndarray]  # extractor -> [d] unit mean of the faces seen so far
  count: int  # faces that joined
  field: np.ndarray | None = None  # the shared cloak's search variable; None until made
  target: str | None = None  # the pool identity it moves toward (targeted mode)

  def join(self, feats: dict[str, np.ndarray]) -> None:
    for e, f in feats.items():
      c = self.centroid[e] * self.count + f
      self.centroid[e] = c / max(np.linalg.norm(c), 1e-12)
    self.count += 1


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray], thresholds: dict[str, float],
             weights: dict[str, float]) -> float:
  """Ensemble distance of two unit features (1.0 = at the same-person threshold)."""
  return sum(w * float(np.sum(np.square(a[e] - b[e]))) / thresholds[e]
             for e, w in weights.items())


def program(config: CloakConfig) -> dict:
  """What a saved cloak depends on: a file made under other settings is refused."""
  keys = ("extractors", "smooth_factor", "jnd_luma", "jnd_chroma", "jnd_masking",
          "max_pixel_change", "mode")
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in ((k, getattr(config, k)) for k in keys)}


def folder_book(config: CloakConfig, extractors, folder) -> "Book":
  """A Book kept in a local folder (`cloak`'s OUT/.jaxcloak)."""
  folder = Path(folder)

  def read(name: str) -> bytes | None:
    path = folder / name
    return path.read_bytes() if path.is_file() else None

  return Book(config, extractors, read=read,
              write=lambda name, data: atomic_write(folder / name, data))


class Book:
  """Every user's people: grouped faces, saved cloaks, read and written as bytes by name."""

  def __init__(self, config: CloakConfig, extractors, *,
               read: Callable[[str], bytes | None] = lambda name: None,
               write: Callable[[str, bytes], None] | None = None):
    self.config = config
    self.names = [e.name for e in extractors]
    self.thresholds = {e.name: e.same_person_sq_distance for e in extractors}
    total = sum(config.weights)
    self.weights = {e.name: w / total for e, w in zip(extractors, config.weights)}
    self._read, self._write = read, write
    self._users: dict[str, list[Person]] = {}

  @staticmethod
  def file_name(user: str) -> str:
    # Users are folder names; a hash keeps any name a safe, fixed-length file name.
    return f"persons/{hashlib.sha256(user.encode()).hexdigest()[:16]}.npz"

  def people(self, user: str) -> list[Person]:
    if user not in self._users:
      data = self._read(self.file_name(user))
      self._users[user] = [] if data is None else self._parse(user, data)
    return self._users[user]

  def users_with_people(self) -> list[str]:
    return [u for u, people in self._users.items() if people]

  def assign(self, user: str, feats: Sequence[dict[str, np.ndarray]]) -> list[tuple[Person, float]]:
    """Each face (extractor -> unit feature) -> (its person, its distance to them), in order;
    a face with no person within the threshold starts a new one."""
    people = self.people(user)
    out = []
    for f in feats:
      dists = [distance(f, p.centroid, self.thresholds, self.weights) for p in people]
      k = int(np.argmin(dists)) if dists else -1
      if k < 0 or dists[k] > self.config.person_match:
        people.append(Person(f"p{len(people)}", {e: f[e].copy() for e in self.names}, 0))
        k = len(people) - 1
      people[k].join(f)
      out.append((people[k], dists[k] if k < len(dists) else 0.0))
    return out

  def mixed_share(self, feats: Sequence[dict[str, np.ndarray]]) -> float:
    """Share of the faces' pairs that look like two different people."""
    n = len(feats)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
      return 0.0
    over = sum(distance(feats[i], feats[j], self.thresholds, self.weights) > 1.0
               for i, j in pairs)
    return over / len(pairs)

  def save(self, user: str) -> None:
    if self._write is None:
      return
    people = [p for p in self.people(user) if p.field is not None]
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "program": program(self.config),
            "user": user, "people": [{"key": p.key, "count": p.count, "target": p.target}
                                     for p in people]}
    arrays = {"meta": np.array(json.dumps(meta))}
    if people:
      arrays["fields"] = np.stack([p.field for p in people]).astype(np.float32)
      for e in self.names:
        arrays[f"centroid/{e}"] = np.stack([p.centroid[e] for p in people]).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    self._write(self.file_name(user), buf.getvalue())

  def _parse(self, user: str, data: bytes) -> list[Person]:
    return parse(self.config, data, f"{self.file_name(user)} (user {user!r})")


def parse(config: CloakConfig, data: bytes, where: str) -> list[Person]:
  """The people of one saved file; PersonCloakError (one line) if it cannot be used."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      arrays = {k: z[k] for k in z.files if k != "meta"}
  except Exception as e:  # any damage: zip, npz or JSON
    raise PersonCloakError(f"saved person cloaks {where} are damaged ({type(e).__name__}); "
                           "delete the file to make them anew") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT \
      or meta.get("version") != FORMAT_VERSION:
    got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else meta
    raise PersonCloakError(f"saved person cloaks {where} are {got}, not {FORMAT} "
                           f"v{FORMAT_VERSION} (made by another version of jaxcloak); delete "
                           "the file to make them anew")
  if meta.get("program") != program(config):
    raise PersonCloakError(f"saved person cloaks {where} were made with other settings "
                           f"({meta.get('program')}); use those settings, or delete the file to "
                           "make them anew")
  people = []
  try:
    for k, p in enumerate(meta["people"]):
      centroid = {e: arrays[f"centroid/{e}"][k] for e in config.extractors}
      people.append(Person(p["key"], centroid, int(p["count"]), arrays["fields"][k],
                           p.get("target")))
  except (KeyError, IndexError, TypeError) as e:
    raise PersonCloakError(f"saved person cloaks {where} are incomplete ({e}); delete the "
                           "file to make them anew") from None
  return people


def verify_folder(config: CloakConfig, folder) -> None:
  """Reads every saved file under folder/persons, so a bad one stops a job before it starts."""
  for path in sorted((Path(folder) / "persons").glob("*.npz")):
    parse(config, path.read_bytes(), str(path))
