"""The cloak sequence, the one place it lives: decode -> detect -> regions -> targets -> cloak.

`cloak`, `migrate` (in process and on Ray actors) and `eval` compute a photo by
calling these functions and nothing else, so a setting has the same effect in
each; only what they do with the result differs (a report line, a manifest
record, a tracker's training photo). The status rules live here too: what a
photo that cannot carry a cloak becomes, which faces are cloaked, which user
has no target.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Sequence

from jaxcloak import targets as targets_lib
from jaxcloak import persons as persons_lib
from jaxcloak.persons import PersonCloakError
from jaxcloak.faces import io as photo_io
from jaxcloak.pipeline.records import Item, Task, error_results, result_of

MAX_FACES = 64  # faces cloaked per photo (largest first); the rest are reported over_cap
AVIF_BRANDS = {b"avif", b"avis"}
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
               b"mif1", b"msf1"} | AVIF_BRANDS


class StageError(ValueError):
  """A setting the stages cannot run with (e.g. targeted mode without a pool)."""


# -- decode, detect, regions --------------------------------------------------------


def decode(engine, items: Sequence[Item]) -> list[Item]:
  """Decodes each item and returns those that can carry a cloak.

  The rest get their status (corrupt, unsupported_format, too_small, ...) and
  are written as exact copies of their input.
  """
  min_face = engine.config.min_face
  live = []
  for it in items:
    brand = _heif_brand(it.data)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      engine.decode(it)
    for w in caught:  # PIL warns (rather than fails) on damaged EXIF; say so in the record
      if "EXIF" in str(w.message):
        it.notes.append(f"EXIF damaged ({w.message}); photo processed without it")
    if it.photo is None:
      if brand and it.status in ("not_an_image", "corrupt"):
        why = ("no decoder for it is installed (pip install pillow-heif)"
               if photo_io.pillow_heif is None and brand not in AVIF_BRANDS else
               f"its decoder failed ({it.message.split(': ', 1)[-1]})")
        it.status = "unsupported_format"
        it.message = (f"{it.name}: {brand.decode().upper()} (HEIF family) photo that cannot be "
                      f"decoded: {why}; copied unchanged")
    elif it.photo.format not in photo_io.WRITABLE_FORMATS:
      it.status = "unsupported_format"
      it.message = (f"{it.name}: {it.photo.format} cannot carry a cloak without changing the "
                    "file's format; copied unchanged")
    elif min(it.photo.rgb.shape[:2]) < min_face:
      h, w = it.photo.rgb.shape[:2]
      it.status = "too_small"
      it.message = (f"{it.name}: {w}x{h} image is smaller than the smallest cloakable face "
                    f"({min_face} px); copied unchanged")
    else:
      note = _suffix_note(it.name, it.photo.format)
      if note:
        it.notes.append(note)
      live.append(it)
  return live


def detect(engine, items: Sequence[Item], *, max_faces: int = MAX_FACES) -> None:
  """Finds every face of the decoded items, then cuts their regions."""
  engine.detect(items)
  cut_regions(engine, items, max_faces=max_faces)


def cut_regions(engine, items: Sequence[Item], *, max_faces: int = MAX_FACES) -> None:
  """Cuts the regions of the items' faces: the `max_faces` largest of a photo are cloaked."""
  for it in items:
    if len(it.faces) > max_faces:
      order = sorted(it.faces, key=lambda f: -f.area)
      for f in order[max_faces:]:
        f.status = "over_cap"
      it.notes.append(f"{len(it.faces)} faces; the {max_faces} largest were cloaked (max_faces), "
                      f"{len(it.faces) - max_faces} reported as over_cap")
  engine.make_regions(items)
  for it in items:
    for f in it.faces:
      if f.status == "over_cap":
        f.region = None


# -- targets and the cloak ------------------------------------------------------------


def choose_targets(engine, items: Sequence[Item], pool: targets_lib.IdentityFeatures | None, *,
                   recorded: dict[str, str | None] | None = None,
                   ) -> tuple[dict[str, targets_lib.Target | None], dict[str, str | None]]:
  """One target per user of the items: the recorded one, else chosen from the main faces
  of that user's items here.

  Returns:
    (user -> Target or None, user -> name of each newly chosen target). A user
    none of whose items has a face gets None (its faces become `no_target`).
  """
  recorded = recorded or {}
  config = engine.config
  if config.mode != "targeted":
    return {}, {}
  if pool is None:
    raise StageError("targeted mode needs a target pool (--pool DIR of identity folders); "
                     "or use --mode untargeted")
  by_user: dict[str, list[Item]] = {}
  for it in items:
    by_user.setdefault(it.user, []).append(it)
  chosen, new = {}, {}
  for user, user_items in by_user.items():
    if user in recorded:
      name = recorded[user]
      chosen[user] = target_by_name(pool, name, config.extractors) if name else None
      continue
    feats = engine.identity_features([it for it in user_items if it.faces])
    target = None
    if len(next(iter(feats.values()))):
      target = targets_lib.choose_target(
          feats, pool, extractors=config.extractors, weights=config.weights,
          choice=config.target_choice, top_k=config.target_top_k, seed=config.seed,
          exclude=(user,))
    chosen[user] = target
    new[user] = target.name if target else None
  return chosen, new


def target_by_name(pool: targets_lib.IdentityFeatures, name: str, extractors: Sequence[str]):
  """The pool identity a job recorded as a user's target."""
  if name not in pool.names:
    raise StageError(f"recorded target {name!r} is not in the target pool; use the pool "
                     "the job was started with")
  i = pool.names.index(name)
  return targets_lib.Target(name, i, float("nan"), {e: pool.centroids(e)[i] for e in extractors},
                            "recorded")


def cloak(engine, items: Sequence[Item], targets: dict[str, targets_lib.Target | None], *,
          pool: targets_lib.IdentityFeatures | None = None, book=None) -> None:
  """Optimises, writes back and refines every face of the items, each toward its user's target.

  With scope="person" each person in the items gets one cloak instead (`cloak_persons`);
  `book` holds the people already known (a fresh one if None), `pool` their targets.
  """
  if engine.config.scope == "person":
    cloak_persons(engine, items, pool=pool, book=book)
    return
  face_targets = {}
  targeted = engine.config.mode == "targeted"
  for it in items:
    target = targets.get(it.user)
    for f in it.faces:
      if target is not None:
        face_targets[id(f)] = target.features
      elif targeted and f.status == "pending":
        f.status = "no_target"
  engine.cloak_items(items, face_targets)


def cloak_persons(engine, items: Sequence[Item], *, pool=None, book=None) -> None:
  """Groups the items' faces into people (per user), makes one cloak for each new person
  from up to `person_photos` of their faces, carries every person's cloak onto all their
  faces, and writes the items back (each face's budget held on its own file)."""
  config = engine.config
  targeted = config.mode == "targeted"
  if targeted and pool is None:
    raise StageError("targeted mode needs a target pool (--pool DIR of identity folders); "
                     "or use --mode untargeted")
  book = book or persons_lib.Book(config, engine.extractors)
  faces = [(it, f) for it in items for f in it.faces
           if f.region is not None and f.status == "pending"]
  feats = engine.region_features([f.region for _, f in faces])
  face_feats = [{e: feats[e][k] for e in feats} for k in range(len(faces))]
  people: dict[int, tuple] = {}  # id(person) -> (user, person, face indices)
  for user in dict.fromkeys(it.user for it, _ in faces):
    ks = [k for k, (it, _) in enumerate(faces) if it.user == user]
    for k, (person, dist) in zip(ks, book.assign(user, [face_feats[k] for k in ks])):
      faces[k][1].stats.update(person=person.key, person_distance=round(dist, 4))
      people.setdefault(id(person), (user, person, []))[2].append(k)
  new = [(u, p, ks) for u, p, ks in people.values() if p.field is None]
  groups, face_targets = [], {}
  for user, person, ks in new:
    # The faces nearest the person's centroid: the clearest views of who they are.
    order = sorted(ks, key=lambda k: persons_lib.distance(
        face_feats[k], person.centroid, book.thresholds, book.weights))
    enrol = [faces[k][1] for k in order[:config.person_photos]]
    if targeted:
      target = targets_lib.choose_target(
          {e: feats[e][ks] for e in config.extractors}, pool, extractors=config.extractors,
          weights=config.weights, choice=config.target_choice, top_k=config.target_top_k,
          seed=config.seed, exclude=(user,))
      person.target = target.name
      face_targets.update({id(f): target.features for f in enrol})
    for f in enrol:
      f.stats["enrolled"] = True
    groups.append(enrol)
  for (_, person, ks), (field, found, stats) in zip(new, engine.optimise_persons(groups,
                                                                                 face_targets)):
    person.field = field if found else None
    for k in ks:
      faces[k][1].stats["search"] = stats
  fields = {}
  for user, person, ks in people.values():
    mixed = book.mixed_share([face_feats[k] for k in ks])
    for k in ks:
      it, f = faces[k]
      f.stats["target"] = person.target
      if mixed > persons_lib.MIXED_PAIR_SHARE:
        # Grouping has no labels: say so where a person's faces disagree.
        f.stats["person_mixed"] = round(mixed, 3)
        it.notes.append(f"face {it.faces.index(f)} joined person {person.key} of user {user!r}, "
                        f"whose faces here may be more than one person ({mixed:.0%} of their "
                        "pairs are over the same-person threshold)")
      if person.field is None:
        f.status = "not_improved"
      else:
        fields[id(f)] = person.field
  engine.apply_persons([f for _, f in faces], fields)
  for it in items:
    engine.write_back(it)
  for user in dict.fromkeys(u for u, _, _ in people.values()):
    book.save(user)


# -- a migration's tasks ------------------------------------------------------------------


def find_faces(finder, tasks: Sequence[Task]) -> None:
  """Decodes each task's photo and finds its faces (a `FaceFinder` is enough)."""
  t0 = time.perf_counter()
  for t in tasks:
    t.item = Item(t.rel, t.data, t.user)
  finder.detect(decode(finder, [t.item for t in tasks]))
  share = (time.perf_counter() - t0) / max(1, len(tasks))
  for t in tasks:
    t.seconds += share


def prepare(engine, tasks: Sequence[Task], *, max_faces: int = MAX_FACES) -> None:
  """Decode, detect and cut regions of each task's photo (all before the optimisation)."""
  if any(t.item is None for t in tasks):
    find_faces(engine, tasks)
  t0 = time.perf_counter()
  live = [t for t in tasks if t.item.status == "pending"]
  cut_regions(engine, [t.item for t in live], max_faces=max_faces)
  share = (time.perf_counter() - t0) / max(1, len(live))
  for t in live:
    t.seconds += share


def compute(engine, tasks: Sequence[Task], *, targets: dict[str, str | None],
            pool=None, book=None) -> dict[str, str | None]:
  """Targets and the cloak for prepared tasks; returns the targets newly chosen.

  Args:
    targets: user -> recorded target name (None = that user had no usable face).
    book: scope="person": the people known so far (`persons.Book`).
  """
  t0 = time.perf_counter()
  live = [t.item for t in tasks
          if t.item.photo is not None and t.item.faces and t.item.status == "pending"]
  chosen, new = ({}, {}) if engine.config.scope == "person" else \
      choose_targets(engine, live, pool, recorded=targets)
  cloak(engine, live, chosen, pool=pool, book=book)
  share = (time.perf_counter() - t0) / max(1, len(live))
  ids = {id(it) for it in live}
  for t in tasks:
    if id(t.item) in ids:
      t.seconds += share
  return new


def process(engine, tasks: Sequence[Task], *, targets: dict[str, str | None], pool=None,
            max_faces: int = MAX_FACES, book=None):
  """Every stage for a chunk of tasks, failures isolated to the photo that caused them.

  Yields (records with output bytes, targets newly chosen) once for the chunk,
  or, if the chunk fails, once per photo retried alone; a photo that fails
  alone is copied unchanged with status `error` (retried on the next run).
  `targets` (user -> recorded name) is updated with every new choice.
  """
  notes = [list(t.notes) for t in tasks]
  groups = [list(tasks)]
  for attempt in range(2):
    for group in groups:
      try:
        prepare(engine, group, max_faces=max_faces)
        new = compute(engine, group, targets=targets, pool=pool, book=book)
      except (StageError, PersonCloakError):  # the job's settings or files, not this photo
        raise
      except Exception as e:  # an engine bug must not stop the archive: copy, record, go on
        if attempt == 0 and len(group) > 1:
          break
        yield error_results(group, e), {}
        continue
      targets.update(new)
      yield [result_of(t, target=targets.get(t.user)) for t in group], new
    else:
      return
    for t, n in zip(tasks, notes):  # retry each photo alone, from its bytes
      t.notes, t.seconds, t.item = n, 0.0, None
    groups = [[t] for t in tasks]


def _heif_brand(data: bytes) -> bytes | None:
  return data[8:12] if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS else None


def _suffix_note(rel: str, fmt: str) -> str | None:
  ext = Path(rel).suffix.lower()
  want = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "PNG": (".png",), "WEBP": (".webp",),
          "TIFF": (".tif", ".tiff"), "BMP": (".bmp", ".dib"), "HEIF": (".heic", ".heif", ".hif"),
          "AVIF": (".avif",)}.get(fmt)
  if want and ext not in want:
    return f"extension {ext or '(none)'} but content is {fmt}; kept the name and the {fmt} format"
  return None
