"""The engine: models, detector and compiled functions, loaded once; batches of faces in,
cloaked and written photos out. What to do with a photo (which faces, which
target, what to record) is `stages.py`'s; the engine only computes.

Data flow: decode (EXIF-upright RGB) -> YuNet detect -> face regions (bucketed
native-resolution patches) -> one compiled optimisation per bucket-shaped batch,
sharded over local devices -> paste -> encode like the source -> re-decode and
check every face's DSSIM on the written bytes (shrinking that face's cloak if
re-encoding pushed it over budget) -> atomic write.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import jax
import numpy as np

from jaxcloak import jpeg as jpeg_lib
from jaxcloak import losses
from jaxcloak import models
from jaxcloak.config import CloakConfig, EngineSettings
from jaxcloak.objective import Objective, member_sq_distances
from jaxcloak.faces import io as photo_io
from jaxcloak.faces import quality
from jaxcloak.faces import regions as regions_lib
from jaxcloak.faces.detect import MAX_SIDE, Detector
from jaxcloak.optimize import (Batch, Knobs, data_mesh, make_apply_fn, make_cloak_fn,
                               program_config, region_features, shard_batch)
from jaxcloak.pipeline.records import Face, Item  # noqa: F401 (also the engine's public types)

# scope="person": every face is cut at this side, so a person's faces share a batch.
PERSON_SIDE = 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif",
                  ".avif"}


class FaceFinder:
  """Decodes photos and finds their faces: the part of the engine that needs no recognizer
  (a Ray detect worker holds only this)."""

  def __init__(self, config: CloakConfig, settings: EngineSettings = EngineSettings()):
    self.config, self.settings = config, settings
    self.detector = Detector(weights_dir=settings.weights_dir, upscale=config.detect_upscale,
                             max_side=settings.detect_side or MAX_SIDE)

  def decode(self, item: Item) -> None:
    try:
      item.photo = photo_io.decode(item.data, name=item.name,
                                   max_pixels=self.settings.max_pixels)
    except photo_io.PhotoError as e:
      item.status, item.message = e.status, str(e)

  def detect(self, items: Sequence[Item]) -> None:
    live = [it for it in items if it.photo is not None]
    if not live:
      return
    for it, dets in zip(live, self.detector([it.photo.rgb for it in live])):
      for b, s, lm in zip(dets.boxes, dets.scores, dets.landmarks):
        it.faces.append(Face(list(map(float, b)), float(s), np.asarray(lm, np.float32)))
      if not it.faces:
        it.status, it.message = "no_face", f"{it.name}: no face found; copied unchanged"


class Cloaker(FaceFinder):
  """Loads models once, compiles once per bucket, cloaks batches of photos."""

  def __init__(self, config: CloakConfig, settings: EngineSettings = EngineSettings(), *,
               devices=None):
    self.extractors = [models.load(n, settings.weights_dir)
                       for n in config.extractors]  # named first
    super().__init__(config, settings)
    self.cloak_fn = make_cloak_fn(self.extractors, config)
    self.objective = Objective.of(config, self.extractors)
    self.apply_fn = make_apply_fn(config)
    self.features = region_features(self.extractors)
    devices = devices if devices is not None else jax.local_devices()
    self.mesh = data_mesh(devices) if len(devices) > 1 else None
    self.n_devices = len(devices)
    # Batch size rounded up to a multiple of the device count for even shards.
    self.batch_size = -(-config.batch_size // self.n_devices) * self.n_devices

  def reconfigured(self, config: CloakConfig) -> "Cloaker":
    """This engine under another config that compiles to the same programs (one differing
    only in budget, steps, seed, learning rate...: `optimize.DATA_FIELDS`); the models
    and compiled functions are shared, nothing is recompiled."""
    if program_config(config) != program_config(self.config):
      raise ValueError("the config needs other compiled programs; build a new Cloaker")
    engine = copy.copy(self)
    engine.config = config
    engine.cloak_fn = dataclasses.replace(self.cloak_fn, knobs=Knobs.of(config))
    return engine

  def compiled_size(self, n: int) -> int:
    """The smallest compiled batch that holds n faces: the device count times a power of
    two, at most batch_size. A padding item costs what a face costs, and a few sizes
    compile once each (views draw per item, so padding never changes a face's cloak)."""
    size = self.n_devices
    while size < n and size < self.batch_size:
      size *= 2
    return min(size, self.batch_size)

  # -- stages ---------------------------------------------------------------

  def make_regions(self, items: Sequence[Item]) -> None:
    for it in items:
      spec = self._jpeg_spec(it.photo)
      # A JPEG output's 8x8 blocks (16x16 MCUs when chroma is subsampled) start
      # on the region's corner, as the simulated encode in the loss assumes.
      grid = jpeg_lib.mcu_size(spec[2]) if spec and spec[3] else 1
      for f in it.faces:
        if min(f.box[2], f.box[3]) < self.config.min_face:
          f.status = "too_small"
          continue
        side = PERSON_SIDE if self.config.scope == "person" else None
        f.region = regions_lib.face_region(it.photo.rgb, f.landmarks, self.extractors,
                                           max_region=self.config.max_region, grid=grid,
                                           side=side)
        if spec is not None:
          on = spec[3] and f.region.scale == 1.0  # downscaled regions have no block grid
          f.jpeg = spec[:3] + (on,)

  def _jpeg_spec(self, photo: photo_io.Photo) -> tuple | None:
    """The encoder settings a photo's output is written with, for the loss (None: off)."""
    if not self.config.jpeg_aware:
      return None
    # Whatever is written as JPEG (an MPO too) is simulated; grayscale keeps one channel: not.
    if photo_io.written_format(photo.format) != "JPEG" or photo.grayscale:
      return jpeg_lib.spec_arrays(None, None)
    quality = self.config.jpeg_quality  # as encode() chooses: set quality, own tables, fallback
    if quality is None and photo.jpeg_qtables:
      return jpeg_lib.spec_arrays(photo.jpeg_qtables, photo.jpeg_subsampling)
    luma, chroma, sub = jpeg_lib.tables_for_quality(quality or photo_io.FALLBACK_JPEG_QUALITY)
    return luma, chroma, sub, True

  def identity_features(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
    """extractor -> [m, d] unit features of each photo's main face (for targets)."""
    regions = []
    for it in items:
      if it.faces:
        f = it.main_face()
        regions.append(f.region or regions_lib.face_region(
            it.photo.rgb, f.landmarks, self.extractors, max_region=self.config.max_region))
    return self.region_features(regions)

  def region_features(self, regions: Sequence[regions_lib.Region]) -> dict[str, np.ndarray]:
    """extractor -> [n, d] unit features of the regions, in input order."""
    out = {e.name: np.zeros((len(regions), e.embedding_dim), np.float32) for e in self.extractors}
    indexed = [(i, r) for i, r in enumerate(regions)]
    for bucket, chunk in _canvas_chunks(indexed, lambda ir: ir[1], self.batch_size):
      patches, affines = _stack_regions([r for _, r in chunk], self.compiled_size(len(chunk)),
                                        bucket, len(self.extractors))
      feats = self.features(patches, affines)
      rows = [i for i, _ in chunk]
      for e, f in zip(self.extractors, feats):
        out[e.name][rows] = np.asarray(f)[:len(chunk)]
    return out

  def optimise(self, faces: Sequence[Face], targets: dict[int, dict[str, np.ndarray]],
               starts: dict[int, np.ndarray] | None = None) -> None:
    """Runs the compiled cloak on every face with a region; `targets` by id(face).

    `starts` (by id(face)) restarts the search from given patches (refinement);
    then every face listed there is optimised whatever its status.
    """
    todo = [f for f in faces if f.region is not None
            and (f.status == "pending" or (starts is not None and id(f) in starts))]
    for bucket, chunk in _canvas_chunks(todo, lambda f: f.region, self.batch_size):
      batch = self._batch(chunk, bucket, targets, starts or {})
      res = jax.device_get(self.cloak_fn(shard_batch(batch, self.mesh)))
      for i, f in enumerate(chunk):
        side = f.region.bucket
        f.cloaked_patch = np.asarray(res.cloaked[i, :side, :side])
        f.stats = {"dssim_float": float(res.dssim[i]), "steps": int(res.steps[i]),
                   "worst_block_float": float(res.worst_block[i]),
                   "start_distance": float(res.start_distance[i]),
                   "final_distance": float(res.final_distance[i]),
                   "self_distance": float(res.self_distance[i]),
                   "objective": float(res.objective[i]),
                   **self._member_stats(res, i)}
        f.status = "cloaked" if bool(res.found[i]) else "not_improved"

  def _member_stats(self, res, i: int) -> dict:
    """Per member, on the float patch: its distance to the target (from the original when
    untargeted), its distance from the original, and whether it is fooled by that."""
    names = [e.name for e in self.extractors]
    return {"member_distances": {n: float(v) for n, v in zip(names, res.member_final[i])},
            "member_self": {n: float(v) for n, v in zip(names, res.member_self[i])},
            "member_fooled": {e.name: bool(v > e.same_person_distance)
                              for e, v in zip(self.extractors, res.member_self[i])}}

  def optimise_persons(self, groups: Sequence[Sequence[Face]],
                       targets: dict[int, dict[str, np.ndarray]]) -> list[tuple]:
    """One shared cloak per group of faces (a person's), searched jointly over them.

    Whole groups are packed into compiled batches (a group larger than the batch is
    cut to it). Returns per group (field, found, stats of the search).
    """
    out: list[tuple] = [None] * len(groups)
    order = list(range(len(groups)))
    while order:
      chunk, persons, members = [], [], []
      while order and len(chunk) + min(len(groups[order[0]]), self.batch_size) <= self.batch_size:
        g = order.pop(0)
        faces = list(groups[g])[:self.batch_size]
        persons += [len(members)] * len(faces)
        members.append((g, len(chunk), len(faces)))
        chunk += faces
      batch = self._batch(chunk, PERSON_SIDE, targets, {})
      b = self.compiled_size(len(chunk))
      ids = np.arange(b, dtype=np.int32) + b  # padding: a person of its own each
      ids[:len(persons)] = persons
      batch = batch._replace(persons=ids, canonical=_stack_canonical(chunk, b))
      res = jax.device_get(self.cloak_fn(shard_batch(batch, self.mesh)))
      for g, first, n in members:
        rows = slice(first, first + n)
        stats = {"steps": int(res.steps[first]), "faces": n,
                 "start_distance": float(np.mean(res.start_distance[rows])),
                 "final_distance": float(np.mean(res.final_distance[rows])),
                 "self_distance": float(np.mean(res.self_distance[rows]))}
        out[g] = (np.asarray(res.field[first]), bool(res.found[first]), stats)
    return out

  def apply_persons(self, faces: Sequence[Face], fields: dict[int, np.ndarray]) -> None:
    """Carries each face's person's saved field (by id(face)) onto it: no search."""
    todo = [f for f in faces if f.region is not None and id(f) in fields]
    for chunk in _chunks(todo, self.batch_size):
      b = self.compiled_size(len(chunk))
      batch = self._batch(chunk, PERSON_SIDE, {}, {})
      batch = batch._replace(canonical=_stack_canonical(chunk, b))
      field = np.zeros((b,) + fields[id(chunk[0])].shape, np.float32)
      for i, f in enumerate(chunk):
        field[i] = fields[id(f)]
      cloaked = np.asarray(self.apply_fn(batch, field, Knobs.of(self.config)))
      for i, f in enumerate(chunk):
        f.cloaked_patch = cloaked[i]
        f.status = "cloaked"

  def _batch(self, chunk, bucket, targets, starts) -> Batch:
    n, b = len(chunk), self.compiled_size(len(chunk))
    patches, affines = _stack_regions([f.region for f in chunk], b, bucket, len(self.extractors))
    masks = np.zeros((b, bucket, bucket), np.float32)
    blocks = np.full((b,), losses.block_size(bucket), np.int32)
    tgt = [np.zeros((b, e.embedding_dim), np.float32) for e in self.extractors]
    for i, f in enumerate(chunk):
      side = f.region.bucket
      masks[i, :side, :side] = f.region.mask
      blocks[i] = losses.block_size(side)
      t = targets.get(id(f))
      for k, e in enumerate(self.extractors):
        if t is not None:
          tgt[k][i] = t[e.name]
    budgets = np.full((b,), self.config.budget * self.config.budget_margin, np.float32)
    active = np.arange(b) < n
    # Always an array (never None) so refinement rounds reuse the same compile.
    start = patches.copy()
    for i, f in enumerate(chunk):
      if id(f) in starts:
        start[i, :f.region.bucket, :f.region.bucket] = starts[id(f)]
    local = None
    if self.config.local_budget is not None:
      local = np.full((b,), self.config.local_budget * self.config.budget_margin, np.float32)
    return Batch(patches, masks, tuple(affines), tuple(tgt), budgets, active, start,
                 self._jpeg_batch(chunk, b), local, blocks=blocks)

  def _jpeg_batch(self, chunk, b) -> jpeg_lib.JpegSpec | None:
    if not self.config.jpeg_aware:
      return None
    off = jpeg_lib.spec_arrays(None, None)
    specs = [f.jpeg or off for f in chunk] + [off] * (b - len(chunk))
    return jpeg_lib.JpegSpec.stack(specs)

  def _written_objective(self, pairs, targets) -> np.ndarray:
    """Per (item, face): the loop's objective measured on the written file (lower is better)."""
    return self.objective_on([regions_lib.recut(f.region, it.written_rgb) for it, f in pairs],
                             [f for _, f in pairs], targets)

  def objective_on(self, regions, faces, targets) -> np.ndarray:
    """The loop's objective (objective.py) of each face as the given region shows it."""
    if not faces:
      return np.zeros((0,))
    now = self.region_features(regions)
    orig = self.region_features([f.region for f in faces])
    names = [e.name for e in self.extractors]
    if self.config.mode == "targeted":
      refs = [np.stack([targets[id(f)][n] for f in faces]) for n in names]
      start = member_sq_distances([orig[n] for n in names], refs)
    else:
      refs = [orig[n] for n in names]
      start = np.zeros((len(names), len(faces)), np.float32)
    return np.asarray(self.objective(member_sq_distances([now[n] for n in names], refs), start))

  def cloak_items(self, items: Sequence[Item], targets: dict[int, dict[str, np.ndarray]]) -> None:
    """The cloak step every command shares: optimise every face of the items,
    write each item back (budget enforced on the file), then the config's
    refine rounds."""
    self.optimise([f for it in items for f in it.faces], targets)
    for it in items:
      self.write_back(it)
    for _ in range(self.config.refine_rounds):
      self.refine(items, targets)

  def refine(self, items: Sequence[Item], targets: dict[int, dict[str, np.ndarray]]) -> None:
    """One more optimisation round per cloaked face, started from its written pixels.

    Re-encoding (the source's JPEG tables, 8-bit rounding, the budget back-off)
    erases part of a cloak; optimising again from the re-decoded file lets the
    optimiser restore what the encoder removed. Each face keeps whichever round
    is better on its written file.
    """
    done = [it for it in items if it.status == "cloaked"]
    pairs = [(it, f) for it in done for f in it.faces if f.status == "cloaked"]
    if not pairs:
      return
    before = self._written_objective(pairs, targets)
    saved = {id(f): (f.cloaked_patch, dict(f.stats), f.strength) for _, f in pairs}
    starts = {id(f): regions_lib.recut(f.region, it.written_rgb).patch for it, f in pairs}
    self.optimise([f for _, f in pairs], targets, starts)
    for it in done:
      for f in it.faces:
        f.strength = 1.0
      it.status, it.output = "pending", None
      self.write_back(it)
    after = self._written_objective([(it, f) for it, f in pairs], targets) \
        if all(it.status == "cloaked" for it in done) else np.full(len(pairs), np.inf)
    redo = set()
    for k, (it, f) in enumerate(pairs):
      if not (f.status == "cloaked" and after[k] < before[k]):
        f.cloaked_patch, f.stats, f.strength = saved[id(f)]
        f.status = "cloaked"
        redo.add(id(it))
      else:
        f.stats["refined"] = True
    for it in done:
      if id(it) in redo:
        it.status, it.output = "pending", None
        self.write_back(it)

  def write_back(self, item: Item) -> None:
    """Pastes cloaked faces, encodes, and enforces the budget on the re-decoded bytes."""
    cloaked = [f for f in item.faces if f.status == "cloaked"]
    if not cloaked:
      if item.status == "pending":
        item.status = "no_cloakable_face"
        item.message = f"{item.name}: faces found but none cloakable ({_statuses(item.faces)})"
      return
    photo = item.photo
    floor = self.config.min_ssimulacra2
    for _ in range(40):
      rgb = photo.rgb
      for f in cloaked:
        rgb = regions_lib.paste(rgb, f.region, f.cloaked_patch, f.strength)
      if self.config.max_pixel_change is not None and len(cloaked) > 1:
        # Overlapping regions add their changes: hold the cap on the sum.
        rgb = regions_lib.hold_cap(photo.rgb, rgb, self.config.max_pixel_change)
      data, fmt = photo_io.encode(photo, rgb, strip_metadata=self.settings.strip_metadata,
                                  jpeg_quality=self.config.jpeg_quality)
      written = photo_io.decode(data, name=item.name, max_pixels=self.settings.max_pixels).rgb
      over = False
      for f in cloaked:
        f.stats["dssim"] = regions_lib.region_dssim(photo.rgb, written, f.region.box)
        f.stats["worst_block"] = regions_lib.worst_block(f.region, written)
        seen = False
        if floor is not None:  # else measured once, on the file that is kept
          f.stats["ssimulacra2"] = quality.region_ssimulacra2(photo.rgb, written, f.region.box)
          seen = f.stats["ssimulacra2"] is not None and f.stats["ssimulacra2"] < floor
        local = self.config.local_budget
        if f.stats["dssim"] > self.config.budget or seen \
            or (local and f.stats["worst_block"] > local):
          f.strength *= 0.93  # JPEG re-encoding adds a little DSSIM; back off gently
          over = True
      if not over:
        break
    else:
      item.status = "over_budget"
      item.message = f"{item.name}: could not meet the visibility budgets after re-encoding"
      return
    for f in cloaked:
      f.stats["strength"] = f.strength
      if floor is None:
        f.stats["ssimulacra2"] = quality.region_ssimulacra2(photo.rgb, written, f.region.box)
    item.output, item.output_format = data, fmt
    item.status = "cloaked"
    item.written_rgb = written


def _statuses(faces) -> str:
  from collections import Counter
  return ", ".join(f"{k}: {v}" for k, v in Counter(f.status for f in faces).items())


def _group_by_bucket(things, key=lambda r: r):
  groups: dict[int, list] = {}
  for t in things:
    groups.setdefault(key(t).bucket, []).append(t)
  return sorted(groups.items())


def _canvas_chunks(things, key, n):
  """(canvas side, chunk of at most n) over things grouped by bucket, smallest first. A
  bucket's last partial chunk is carried up into the next bucket's canvas (padded
  there), so a small job of mixed sizes runs as one or two programs, not one per
  bucket; each face keeps its own mask and visibility tiles (`Batch.blocks`)."""
  groups = _group_by_bucket(things, key)
  carry: list = []
  for k, (bucket, group) in enumerate(groups):
    group = carry + group
    whole = len(group) if k == len(groups) - 1 else len(group) - len(group) % n
    yield from ((bucket, chunk) for chunk in _chunks(group[:whole], n))
    carry = group[whole:]


def _chunks(seq, n):
  for i in range(0, len(seq), n):
    yield seq[i:i + n]


def _stack_canonical(faces, batch):
  out = np.tile(np.eye(2, 3, dtype=np.float32), (batch, 1, 1))
  for i, f in enumerate(faces):
    out[i] = f.region.canonical
  return out


def _stack_regions(regions, batch, bucket, n_ext):
  patches = np.zeros((batch, bucket, bucket, 3), np.float32)
  affines = [np.tile(np.eye(2, 3, dtype=np.float32), (batch, 1, 1)) for _ in range(n_ext)]
  for i, r in enumerate(regions):
    patches[i, :r.bucket, :r.bucket] = r.patch
    for k in range(n_ext):
      affines[k][i] = r.affines[k]
  return patches, affines
