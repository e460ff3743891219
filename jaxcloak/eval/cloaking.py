"""Cloaking evaluation photos through the real engine, in memory.

Every cloaked photo goes decode -> (the eval's cached detections) -> regions ->
target from the pool -> compiled optimisation -> write_back, and the tracker
gets the pixels of the *written file* (re-decoded), re-detected by the
tracker's own detector. One compiled cloak function is shared by configs that
differ only in knobs the compiled loop takes as data (budget, target choice).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from jaxcloak import targets as targets_lib
from jaxcloak.config import CloakConfig, EngineSettings
from jaxcloak.eval.dataset import Sample, detect_samples
from jaxcloak.eval.metrics import psnr
from jaxcloak.faces import io as photo_io
from jaxcloak.optimize import program_config
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.records import Face, Item


# Fields named in the label's short head; every other field is named when it is
# not the default, so two configs that differ in anything get different labels.
_HEAD = ("extractors", "budget", "steps", "mode", "target_choice", "stop_fraction",
         "blur_sigmas", "jpeg_aware", "seed")


def _num(x: float) -> str:
  """A number as short as %g when that is exact, else in full (0.01200001 is not 0.012)."""
  short = f"{x:g}"
  return short if float(short) == x else repr(x)


def config_label(config: CloakConfig) -> str:
  """A short, stable name for a config, unique to it: the key of its cloaked samples
  and of the tracker features cached for them, and its name in reports."""
  parts = ["+".join(config.extractors), f"b{_num(config.budget)}", f"s{config.steps}",
           config.mode[0]]
  if config.target_choice != "max":
    parts.append(config.target_choice)
  if config.stop_fraction is not None:
    parts.append(f"stop{_num(config.stop_fraction)}")
  if config.blur_sigmas:
    parts.append("blur" + ",".join(_num(s) for s in config.blur_sigmas))
  if not config.jpeg_aware:
    parts.append("rawpixels")
  default = CloakConfig()
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if f.name not in _HEAD and v != getattr(default, f.name):
      parts.append(f"{f.name}={','.join(map(str, v)) if isinstance(v, tuple) else v}")
  if config.seed:
    parts.append(f"seed{config.seed}")
  return "/".join(parts)


@dataclasses.dataclass
class Cloaked:
  """One user photo as cloaked and written (or left as is when nothing was cloaked)."""
  sample: Sample | None  # what the tracker sees (re-detected); None if no face re-found
  source: Sample
  status: str
  target: str | None
  dssim: float | None
  psnr: float | None
  seconds: float  # wall time per photo of its cloak call (compile included if first)
  feature_shift: float | None = None  # L2 move of the user-model features (float patch)
  # Per ensemble member, where the engine's face stats carry them (the loop's
  # distances and "fooled" flags on the float patch): member -> value. The
  # transfer experiment judges the written files itself either way.
  member_distances: dict[str, float] | None = None
  member_fooled: dict[str, bool] | None = None
  # What people see, measured on the written file by the engine.
  ssimulacra2: float | None = None
  worst_block: float | None = None


class CloakRunner:
  """Cloaks users' photos per config, reusing compiled functions, caching results."""

  def __init__(self, *, pool: targets_lib.IdentityFeatures, detector, weights_dir=None,
               log: Callable[[str], None] = print):
    self.pool = pool
    self.detector = detector
    self.weights_dir = weights_dir
    self.log = log
    self._cloakers: dict[CloakConfig, Cloaker] = {}
    self._done: dict[tuple[CloakConfig, str], Cloaked] = {}
    self.compile_seconds: dict[str, float] = {}

  def release(self, config: CloakConfig) -> None:
    """Drops a config's engine and its compiled programs once no step needs them: a long
    eval compiles thousands of programs, and each holds memory maps (the kernel's
    per-process limit, vm.max_map_count = 65530 by default, ended earlier runs)."""
    self._cloakers.pop(program_config(config), None)

  def cloaker(self, config: CloakConfig) -> Cloaker:
    """An engine for the config, sharing compiled programs with every config that
    differs only in data (budget, steps, seed, ...)."""
    key = program_config(config)
    if key not in self._cloakers:
      self._cloakers[key] = Cloaker(config, EngineSettings(weights_dir=self.weights_dir))
    return self._cloakers[key].reconfigured(config)

  def cloak_user(self, config: CloakConfig, user: str, photos: Sequence[Sample]) -> list[Cloaked]:
    """Cloaks one user's photos with one target chosen from all of them."""
    return self.cloak_users(config, {user: photos})[user]

  def cloak_users(self, config: CloakConfig,
                  groups: dict[str, Sequence[Sample]]) -> dict[str, list[Cloaked]]:
    """Cloaks several users' photos in shared batches (one target per user)."""
    todo = {u: [s for s in ps if (config, s.key) not in self._done] for u, ps in groups.items()}
    todo = {u: ps for u, ps in todo.items() if ps}
    if todo:
      self._cloak(config, todo)
    return {u: [self._done[(config, s.key)] for s in ps] for u, ps in groups.items()}

  def _cloak(self, config: CloakConfig, groups: dict[str, Sequence[Sample]]) -> None:
    cloaker = self.cloaker(config)
    t0 = time.time()
    items, photos, targets = [], [], {}
    for user, ps in groups.items():
      user_items = [Item(s.key, s.data, user) for s in ps]
      live = {id(it) for it in stages.decode(cloaker, user_items)}
      for it, s in zip(user_items, ps):
        if id(it) in live:  # the eval already detected every photo; reuse those faces
          it.faces = [Face(list(map(float, b)), float(sc), np.asarray(lm, np.float32))
                      for b, sc, lm in zip(s.boxes, s.scores, s.all_landmarks)]
      live_items = [it for it in user_items if id(it) in live]
      stages.cut_regions(cloaker, live_items)
      targets.update(stages.choose_targets(cloaker, live_items, self.pool)[0])
      items += user_items
      photos += list(ps)
    stages.cloak(cloaker, [it for it in items if it.photo is not None and it.status == "pending"],
                 targets, pool=self.pool)
    seconds = (time.time() - t0) / max(1, len(items))
    written = []
    for s, it in zip(photos, items):
      data = it.output if it.output is not None else s.data
      written.append(photo_io.decode(data, name=s.key).rgb)
    # The tracker runs its own detector on the written file; it falls back to
    # the clean landmarks only if the cloak hid the face from detection.
    keys = [f"{config_label(config)}|{s.key}" for s in photos]
    redetected = detect_samples(self.detector, keys, [s.identity for s in photos], written,
                                datas=[it.output or s.data for s, it in zip(photos, items)],
                                paths=[s.path for s in photos],
                                fallback=[s.landmarks for s in photos])
    for s, it, w, r in zip(photos, items, written, redetected):
      main = it.main_face()
      dssim = main.stats.get("dssim") if main is not None and main.status == "cloaked" else None
      p = None
      if main is not None and main.region is not None and it.output is not None:
        x0, y0, x1, y1 = main.region.box
        p = psnr(s.rgb[y0:y1, x0:x1], w[y0:y1, x0:x1])
      t = targets.get(it.user)  # None: no target (no face of the user's was usable)
      stats = main.stats if main is not None else {}
      self._done[(config, s.key)] = Cloaked(
          r, s, it.status, t.name if t else None, dssim, p, seconds, stats.get("self_distance"),
          _per_member(stats.get("member_distances", stats.get("member_self")), config.extractors,
                      float),
          _per_member(stats.get("member_fooled"), config.extractors, bool),
          stats.get("ssimulacra2") if dssim is not None else None,
          stats.get("worst_block") if dssim is not None else None)


def _per_member(values, members: Sequence[str], cast) -> dict | None:
  """A per-member stat as member -> value, whether the engine gives a dict or a sequence."""
  if values is None:
    return None
  if isinstance(values, dict):
    return {str(k): cast(v) for k, v in values.items()}
  values = np.asarray(values).ravel().tolist()
  return {m: cast(v) for m, v in zip(members, values)} if len(values) == len(members) else None


def pool_identity_features(embedders: dict, samples: dict[str, list[Sample]],
                           features) -> targets_lib.IdentityFeatures:
  """Target-pool features for the given extractors, from already detected samples."""
  names = sorted(samples)
  feats = {}
  for ext in embedders:
    feats[ext] = [features(ext, samples[n]) for n in names]
  return targets_lib.IdentityFeatures(names, feats)
