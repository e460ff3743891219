"""What an evaluation run measures: data sizes, the cloak, the trackers and the
experiments with their knobs, as one frozen `Settings` (the CLI maps flags onto it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxcloak import models
from jaxcloak.config import CloakConfig, parse_field, preset
from jaxcloak.eval import pipelines

# Cheap, central experiments first: a long run's partial report is useful early.
EXPERIMENTS = ("matrix", "transfer", "frontier", "knobs", "budget", "leakage", "robust",
               "adaptive", "detection", "transforms", "finetune")
# Run when --experiments is not given: all but the knob table and the frontier,
# which are studies of their own.
DEFAULT_EXPERIMENTS = tuple(e for e in EXPERIMENTS if e not in ("knobs", "frontier"))
# The frontier's strength points: the DSSIM budget with the worst-block cap in the
# ratio the presets hold it (0.012 : 0.03), so both bounds loosen together.
FRONTIER_POINTS = ("budget=0.004 local_budget=0.01", "budget=0.008 local_budget=0.02",
                   "budget=0.012 local_budget=0.03", "budget=0.02 local_budget=0.05")
# The knob table's rows: each technique switched against the base cloak.
KNOBS = ("local_budget=None", "ensemble=mean", "extractors=dlib+mobileface+faceres",
         "extractors=dlib_robust+mobileface", "views=1", "views=1 view_kinds=affine",
         "views=1 view_kinds=flip", "views=1 view_kinds=blur", "views=1 view_kinds=jpeg",
         "views=1 view_kinds=noise", "feature_dropout=0.1", "optimizer=mifgsm",
         "mode=untargeted", "budget=0.017", "steps=150", "max_pixel_change=0.06")


@dataclasses.dataclass(frozen=True)
class Settings:
  data: Path
  pool: Path
  seed: int = 0
  # Data sizes.
  identities: int | None = None  # DATA identities used (None = all)
  max_photos: int | None = 40  # photos per DATA identity
  pool_identities: int | None = 200  # target-pool identities (None = all)
  pool_photos: int | None = 5  # photos per pool identity
  background: int = 0  # pool identities added to the tracker as extra classes
  users: int = 10
  user_names: tuple[str, ...] = ()
  train_per_user: int = 10
  min_test: int = 3
  # Cloak settings.
  preset: str = "mid"
  steps: int | None = None
  batch_size: int = 8
  user_models: tuple[str, ...] = ("dlib", "facenet", "sface", "dlib+facenet+sface")
  target_choice: str = "max"  # the base cloak's target choice (detection varies it)
  jpeg_aware: bool = True  # optimise through the simulated JPEG encode (the engine's default)
  # Any other CloakConfig fields for every cloak of the run, as (field, value)
  # pairs (e.g. (("views", 2),) to measure a transfer knob).
  cloak_overrides: tuple[tuple[str, object], ...] = ()
  # Trackers: `<extractor>[@<pipeline>]` (pipelines.py; default yunet).
  trackers: tuple[str, ...] = ("dlib", "facenet", "sface")
  # Trackers for the costly experiments (transforms re-embed every photo per
  # transform, fine-tuning trains the extractor). None: the white-box ones, the
  # trackers whose extractor is in the base user model; the matrix shows the
  # transfer trackers' PSR is near zero, which a transform can hardly lower.
  focus_trackers: tuple[str, ...] | None = None
  kinds: tuple[str, ...] = ("probe", "knn")
  probe_steps: int = 300
  knn_k: int = 3
  robust_eps: float = 0.1  # L2 on unit features; same-identity spread is ~0.4-0.6
  pgd_steps: int = 5
  robust_crop_eps: float = 0.0  # >0 adds the crop-pixel PGD tracker (expensive), e.g. 4/255
  adaptive_photos: int = 3  # per non-user identity, cloaked for the adaptive tracker
  finetune_epochs: int = 1
  # Transfer: the models left out in turn (None = every registered extractor,
  # jaxcloak.models.EXTRACTORS, so newly ported models join by themselves) and
  # the tracker pipelines each held-out model is measured through.
  transfer_models: tuple[str, ...] | None = None
  held_out: tuple[str, ...] | None = None  # only these folds (None: every one), e.g. to finish a run
  tracker_pipelines: tuple[str, ...] = pipelines.PIPELINES
  # Knobs: each a space-separated list of CloakConfig FIELD=VALUE applied to
  # the base cloak (config.parse_field; e.g. "views=1 view_kinds=blur").
  knobs: tuple[str, ...] = KNOBS
  # Frontier: each family (space-separated FIELD=VALUE settings on the base cloak,
  # or "base") at each strength point (FIELD=VALUE settings on top of it), cloaked
  # without the held-out models and judged by trackers on them (transfer) and on
  # the cloak's own members (white-box).
  frontier_families: tuple[str, ...] = ("base",)
  frontier_points: tuple[str, ...] = FRONTIER_POINTS
  frontier_held_out: tuple[str, ...] = ("facenet", "sface")  # tracker specs
  # Experiments.
  experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
  budgets: tuple[float, ...] = (0.002, 0.004, 0.007, 0.012, 0.017)
  leaks: tuple[float, ...] = (0.0, 0.2, 0.5)
  transforms: tuple[str, ...] = ("blur:1", "blur:2", "noise:0.02", "noise:0.05", "jpeg:90",
                                 "jpeg:70", "jpeg:50", "jpeg:30", "augment")
  augment_copies: int = 2
  weights_dir: str | None = None
  insightface_root: str = "~/.insightface"

  def focus(self) -> tuple[str, ...]:
    if self.focus_trackers is not None:
      return self.focus_trackers
    base = set(self.user_models[0].split("+"))
    return tuple(t for t in self.trackers if pipelines.parse(t)[0] in base) or self.trackers

  def transfer_set(self) -> tuple[str, ...]:
    return tuple(self.transfer_models) if self.transfer_models else tuple(models.EXTRACTORS)

  def base_config(self, models: str | None = None, **overrides) -> CloakConfig:
    extra = {"steps": self.steps} if self.steps is not None else {}
    extra.update(target_choice=self.target_choice, jpeg_aware=self.jpeg_aware)
    extra.update(dict(self.cloak_overrides))
    extra.update(overrides)
    extra.setdefault("extractors", tuple((models or self.user_models[0]).split("+")))
    return preset(self.preset, batch_size=self.batch_size, seed=self.seed, **extra)

  def knob_config(self, knob: str) -> CloakConfig:
    """The base cloak with one knob's FIELD=VALUE settings applied."""
    return self.base_config(**dict(parse_field(part) for part in knob.split()))

  def frontier_config(self, family: str, point: str) -> CloakConfig:
    """A family at a strength point, its ensemble without the held-out models."""
    fields = dict(parse_field(p) for p in ("" if family == "base" else family).split())
    fields.update(parse_field(p) for p in point.split())
    # A family is the preset's cloak (its own ensemble, not --user-models') plus its fields.
    fields.setdefault("extractors", preset(self.preset).extractors)
    config = self.base_config(**fields)
    held = {pipelines.parse(t)[0] for t in self.frontier_held_out}
    members = tuple(m for m in config.extractors if m not in held)
    if not members:
      raise ValueError(f"frontier family {family!r}: every member ({', '.join(config.extractors)})"
                       " is held out; nothing is left to cloak with")
    if members == config.extractors:
      return config
    weights = tuple(w for m, w in zip(config.extractors, config.extractor_weights)
                    if m not in held)
    return dataclasses.replace(config, extractors=members, extractor_weights=weights)

