"""The evaluation experiments (Fawkes §5-§8), as records of counts and rates.

Setup, for each protected user U among DATA's identities: U's photos split
into a train part (cloaked by jaxcloak) and a clean test part. The tracker
trains on U's train part as written to disk (cloaked), every other DATA
identity's clean train photos, and optionally background identities from the
pool; it then classifies U's clean test photos (PSR) and the other
identities' test photos (normal accuracy).

Experiments: `matrix` (user model x tracker extractor), `budget` (PSR vs DSSIM
budget, Fig. 16), `leakage` (share of U's tracker photos left uncloaked),
`transforms` (blur / noise / JPEG / augmentation of the tracker's photos),
`robust` (probe adversarially trained with PGD on its input features),
`transfer` (leave one model out: cloak with the other models' ensemble, track
with the held-out one, through each tracker pipeline; beside the white-box
ensemble of all of them), `knobs` (each transfer technique on and off against
the base cloak, judged by held-out trackers and by what people see; opt-in),
`adaptive` (the tracker adds cloaked photos of identities it knows to its
training set, Radiya-Dixit et al. 2022), `finetune` (the extractor's last
layers trained too) and `detection` (§8.2, with and without mitigations).
Every record carries the counts behind its rates.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcloak import models
from jaxcloak.config import CloakConfig, parse_field, preset
from jaxcloak.eval import dataset, metrics, pipelines, trackers
from jaxcloak.eval import transforms as transforms_lib
from jaxcloak.eval.cloaking import CloakRunner, Cloaked, config_label, pool_identity_features
from jaxcloak.eval.dataset import Sample

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
class Holdout:
  """One leave-one-out fold of the transfer experiment."""
  held_out: str  # the tracker's extractor
  transfer: tuple[str, ...]  # cloak ensemble without it
  white_box: tuple[str, ...]  # cloak ensemble with it (all models)


def leave_one_out(names: Sequence[str]) -> list[Holdout]:
  """One fold per model: cloak with every other model, track with the one left out."""
  names = tuple(names)
  if len(names) < 2:
    raise ValueError(f"the transfer experiment needs at least 2 models, got {', '.join(names)}")
  if len(set(names)) != len(names):
    raise ValueError(f"transfer models repeat: {', '.join(names)}")
  return [Holdout(m, tuple(n for n in names if n != m), names) for m in names]


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


class FeatureStore:
  """Embeds samples per tracker (extractor @ pipeline), caching by sample key."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.embedders: dict[str, object] = {}
    self.pipelines = pipelines.Pipelines(weights_dir=settings.weights_dir)
    self.cache: dict[tuple[str, str], np.ndarray] = {}

  def embedder(self, spec: str):
    """The extractor of a tracker spec (its pipeline part is ignored)."""
    model, _ = pipelines.parse(spec)
    if model not in self.embedders:
      self.embedders[model] = trackers.make_embedder(
          model, weights_dir=self.settings.weights_dir,
          insightface_root=self.settings.insightface_root)
    return self.embedders[model]

  def crops(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    """The ported extractor's input crops as the spec's pipeline makes them."""
    emb = self.embedder(spec)
    if not isinstance(emb, trackers.PortedEmbedder):
      raise ValueError(f"{spec}: crops need a ported (JAX) extractor")
    e = emb.extractor
    return self.pipelines[pipelines.parse(spec)[1]].crops(samples, e.input_size, e.template)

  def _embed(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    emb = self.embedder(spec)
    pipe = pipelines.parse(spec)[1]
    if pipe == pipelines.DEFAULT:
      return emb([s.rgb for s in samples], [s.landmarks for s in samples])
    if isinstance(emb, trackers.PortedEmbedder):
      return np.concatenate([emb.embed_crops(self.crops(spec, samples[i:i + 64]))
                             for i in range(0, len(samples), 64)])  # bounds crop memory
    p = self.pipelines[pipe]
    if not p.aligns:
      raise ValueError(f"{spec}: the {pipe} pipeline needs a ported extractor")
    return emb([s.rgb for s in samples], p.landmarks(samples))

  def __call__(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    spec = pipelines.spec(*pipelines.parse(spec))  # 'dlib@yunet' shares 'dlib''s cache
    missing = {s.key: s for s in samples if (spec, s.key) not in self.cache}
    if missing:
      todo = list(missing.values())
      feats = self._embed(spec, todo)
      for s, f in zip(todo, feats):
        self.cache[(spec, s.key)] = f
    if not samples:
      return np.zeros((0, 1), np.float32)
    return np.stack([self.cache[(spec, s.key)] for s in samples])


class Evaluation:
  """Holds the loaded data and runs the experiments; `records` collects results."""

  def __init__(self, settings: Settings, *, log: Callable[[str], None] = print):
    self.s = settings
    self.t0 = time.time()
    self._log = log
    self.records: list[dict] = []
    self.info: dict = {}
    self._cloaked: dict = {}

  def log(self, msg: str) -> None:
    self._log(f"[{time.time() - self.t0:7.1f}s] {msg}")

  # -- setup -------------------------------------------------------------------

  def load(self) -> None:
    from jaxcloak.faces.detect import Detector
    s = self.s
    self.detector = Detector(weights_dir=s.weights_dir)
    data_ids = dataset.scan(s.data)
    chosen = dataset.subsample(data_ids, max_identities=s.identities, max_photos=s.max_photos,
                               keep=s.user_names, seed=s.seed)
    self.samples, dropped = dataset.load_samples(self.detector, chosen, prefix="data",
                                                 log=self.log)
    self.users = dataset.pick_users(self.samples, n=s.users, train_per_user=s.train_per_user,
                                    min_test=s.min_test, seed=s.seed, names=s.user_names)
    self.splits = dataset.split_identities(self.samples, self.users,
                                           train_per_user=s.train_per_user, seed=s.seed)
    pool_ids = {k: v for k, v in dataset.scan(s.pool).items() if k not in self.samples}
    pool_chosen = dataset.subsample(pool_ids, max_identities=s.pool_identities,
                                    max_photos=s.pool_photos, seed=s.seed + 1)
    self.pool_samples, pool_dropped = dataset.load_samples(self.detector, pool_chosen,
                                                           prefix="pool", log=self.log)
    if not self.pool_samples:
      raise ValueError(f"no usable identity in the pool {s.pool}")
    rng = np.random.default_rng(s.seed + 2)
    names = sorted(self.pool_samples)
    self.background = sorted(rng.choice(names, size=min(s.background, len(names)),
                                        replace=False).tolist()) if s.background else []
    self.classes = sorted(self.samples) + self.background
    self.label = {n: i for i, n in enumerate(self.classes)}
    self.features = FeatureStore(s)
    # Target-pool features only for the models some experiment of the run cloaks with
    # (each model costs minutes on a CPU for a 200-identity pool).
    cloak_models = set()
    if set(s.experiments) - {"transfer", "frontier"}:
      cloak_models |= {m for um in s.user_models for m in um.split("+")}
    if "transfer" in s.experiments:
      cloak_models |= set(s.transfer_set())
    if "knobs" in s.experiments:
      cloak_models |= {m for k in s.knobs for m in s.knob_config(k).extractors}
    if "frontier" in s.experiments:
      cloak_models |= {m for f in s.frontier_families for p in s.frontier_points
                       for m in s.frontier_config(f, p).extractors}
    cloak_models = sorted(cloak_models)
    self.log(f"target-pool features for {len(self.pool_samples)} identities ({', '.join(cloak_models)})")
    pool = pool_identity_features(cloak_models, self.pool_samples, self.features)
    self.runner = CloakRunner(pool=pool, detector=self.detector, weights_dir=s.weights_dir,
                              log=self.log)
    self.info.update({
        "data": str(s.data), "pool": str(s.pool),
        "data_identities": len(self.samples),
        "data_photos": sum(len(v) for v in self.samples.values()),
        "data_dropped": dropped, "pool_identities": len(self.pool_samples),
        "pool_photos": sum(len(v) for v in self.pool_samples.values()),
        "pool_dropped": pool_dropped, "background_identities": len(self.background),
        "users": self.users, "tracker_classes": len(self.classes),
        "train_photos_per_user": s.train_per_user,
        "test_photos_per_user": {u: len(self.splits[u].test) for u in self.users},
    })
    self.log(f"{len(self.samples)} identities, users: {', '.join(self.users)}; "
             f"{len(self.classes)} tracker classes")

  # -- pieces --------------------------------------------------------------------

  def cloak(self, config: CloakConfig, user: str) -> list[Cloaked]:
    """U's train photos as cloaked with config (every user is cloaked on first use)."""
    if config not in self._cloaked:
      groups = {u: self.splits[u].train for u in self.users}
      t = time.time()
      self.log(f"cloaking {sum(map(len, groups.values()))} photos of {len(groups)} users "
               f"[{config_label(config)}]")
      self._cloaked[config] = self.runner.cloak_users(config, groups)
      self.log(f"  done in {time.time() - t:.1f}s")
    return self._cloaked[config][user]

  def cloaked_samples(self, config: CloakConfig, user: str) -> list[Sample]:
    return [c.sample for c in self.cloak(config, user) if c.sample is not None]

  def _train_set(self, user: str, user_train: Sequence[Sample]) -> tuple[list[Sample], list[int]]:
    xs, ys = list(user_train), [self.label[user]] * len(user_train)
    for n in sorted(self.samples):
      if n != user:
        xs += self.splits[n].train
        ys += [self.label[n]] * len(self.splits[n].train)
    for n in self.background:
      xs += self.pool_samples[n]
      ys += [self.label[n]] * len(self.pool_samples[n])
    return xs, ys

  def _test_sets(self, user: str) -> tuple[list[Sample], list[Sample], list[int]]:
    others, labels = [], []
    for n in sorted(self.samples):
      if n != user:
        others += self.splits[n].test
        labels += [self.label[n]] * len(self.splits[n].test)
    return self.splits[user].test, others, labels

  def track(self, tracker: str, kind: str, user: str, user_train: Sequence[Sample], *,
            extra: Sequence[tuple[Sample, int]] = (),
            transform: transforms_lib.Transform | None = None) -> dict:
    """Trains one tracker and returns PSR on U's clean test photos and accuracy on others."""
    s = self.s
    xs, ys = self._train_set(user, user_train)
    xs += [e[0] for e in extra]
    ys += [e[1] for e in extra]
    u_test, o_test, o_labels = self._test_sets(user)
    if transform is not None:
      xs = self._transformed(transform, xs, train=True)
      ys = [y for y in ys for _ in range(self._copies(transform))]
      if not transform.train_only:
        u_test = self._transformed(transform, u_test, train=False)
        o_test = self._transformed(transform, o_test, train=False)
    y = np.asarray(ys, np.int64)
    n_classes = len(self.classes)
    seed = s.seed
    if kind in ("finetune", "robust-crop"):
      emb = self.features.embedder(tracker)
      if not isinstance(emb, trackers.PortedEmbedder):
        raise ValueError(f"the {kind} tracker needs a ported (JAX) extractor")
      crop = lambda ss: self.features.crops(tracker, ss)
      if kind == "finetune":
        clf = trackers.FineTuned(emb, epochs=s.finetune_epochs, seed=seed)
      else:
        clf = trackers.CropRobustProbe(emb, eps=s.robust_crop_eps, pgd_steps=s.pgd_steps,
                                       probe_steps=s.probe_steps, seed=seed)
      clf.fit(crop(xs), y, n_classes)
      pu, po = clf.predict(crop(u_test)), clf.predict(crop(o_test))
    else:
      clf = trackers.make_classifier(kind, seed=seed, probe_steps=s.probe_steps, knn_k=s.knn_k,
                                     adversarial_eps=s.robust_eps, pgd_steps=s.pgd_steps)
      clf.fit(self.features(tracker, xs), y, n_classes)
      pu = clf.predict(self.features(tracker, u_test))
      po = clf.predict(self.features(tracker, o_test))
    return {"psr": metrics.psr(pu, self.label[user]), "acc": metrics.accuracy(po, o_labels),
            "train_user_photos": len(user_train), "train_photos": len(xs)}

  def _copies(self, t: transforms_lib.Transform) -> int:
    return 1 + self.s.augment_copies if t.kind == "augment" else 1

  def _transformed(self, t: transforms_lib.Transform, samples: Sequence[Sample], *,
                   train: bool) -> list[Sample]:
    out = []
    for x in samples:
      if t.kind == "augment":
        out.append(x)  # the original plus random copies
        for c in range(self.s.augment_copies):
          rgb, lm = transforms_lib.apply(t, x.rgb, x.landmarks, seed=_seed(self.s.seed, x.key, c))
          out.append(dataclasses.replace(x, key=f"{t.label}#{c}|{x.key}", rgb=rgb, landmarks=lm))
      else:
        rgb, lm = transforms_lib.apply(t, x.rgb, x.landmarks, seed=_seed(self.s.seed, x.key, 0))
        out.append(dataclasses.replace(x, key=f"{t.label}|{x.key}", rgb=rgb, landmarks=lm))
    return out

  def record(self, experiment: str, config: CloakConfig | None, setting: str, user: str,
             tracker: str, kind: str, result: dict, **extra) -> None:
    rec = {"experiment": experiment, "config": config_label(config) if config else "none (clean)",
           "setting": setting, "user": user, "tracker": tracker, "kind": kind,
           "psr": result["psr"].value, "psr_k": result["psr"].k, "psr_n": result["psr"].n,
           "acc": result["acc"].value, "acc_k": result["acc"].k, "acc_n": result["acc"].n,
           "train_user_photos": result["train_user_photos"], "train_photos": result["train_photos"]}
    rec.update(extra)
    self.records.append(rec)

  def quality(self, experiment: str, config: CloakConfig, **extra) -> None:
    rows = [c for u in self.users for c in self.cloak(config, u)]
    d = [c.dssim for c in rows if c.dssim is not None]
    p = [c.psnr for c in rows if c.psnr is not None and np.isfinite(c.psnr)]
    fs = [c.feature_shift for c in rows if c.feature_shift is not None and c.dssim is not None]
    statuses: dict[str, int] = {}
    for c in rows:
      statuses[c.status] = statuses.get(c.status, 0) + 1
    self.records.append({
        "experiment": "quality", "for": experiment, "config": config_label(config),
        "budget": config.budget, "steps": config.steps, "photos": len(rows),
        "cloaked": len(d), "statuses": statuses,
        "redetected": sum(1 for c in rows if c.sample is not None and len(c.sample.scores)),
        "dssim_mean": float(np.mean(d)) if d else None, "dssim_max": float(np.max(d)) if d else None,
        "psnr_mean": float(np.mean(p)) if p else None,
        **_visibility(rows),
        "feature_shift_mean": float(np.mean(fs)) if fs else None,
        "seconds_per_photo": float(np.mean([c.seconds for c in rows])) if rows else None,
        "targets": sorted({c.target for c in rows if c.target}), **extra})

  # -- experiments ---------------------------------------------------------------

  def run(self, *, after_each: Callable[[], None] | None = None) -> list[dict]:
    """Runs the experiments in the order given; `after_each` runs after every one
    (the CLI rewrites the report there, so a long run has partial results early)."""
    s = self.s
    unknown = set(s.experiments) - set(EXPERIMENTS)
    if unknown:
      raise ValueError(f"unknown experiments: {', '.join(sorted(unknown))}")
    for t in s.trackers + tuple(s.focus_trackers or ()):
      pipelines.parse(t)  # a mistyped pipeline fails before any work
    bad = [p for p in s.tracker_pipelines if p not in pipelines.PIPELINES]
    if bad:
      raise ValueError(f"unknown tracker pipelines: {', '.join(bad)} "
                       f"(use {', '.join(pipelines.PIPELINES)})")
    if "transfer" in s.experiments:
      leave_one_out(s.transfer_set())
      stray = sorted(set(s.held_out or ()) - set(s.transfer_set()))
      if stray:
        raise ValueError(f"--held-out {', '.join(stray)}: not among the transfer models "
                         f"({', '.join(s.transfer_set())})")
    if "knobs" in s.experiments:
      for k in s.knobs:
        s.knob_config(k)  # a bad knob fails before any work
    if "frontier" in s.experiments:
      for f in s.frontier_families:
        for p in s.frontier_points:
          s.frontier_config(f, p)  # likewise a bad family or point
    if not hasattr(self, "samples"):
      self.load()
    self._checkpoint = after_each or (lambda: None)
    for name in dict.fromkeys(s.experiments):
      t = time.time()
      self.log(f"experiment {name}")
      getattr(self, f"exp_{name}")()
      self.info.setdefault("experiment_seconds", {})[name] = round(time.time() - t, 1)
      self.info["seconds"] = round(time.time() - self.t0, 1)
      if after_each is not None:
        after_each()
    return self.records

  def exp_matrix(self) -> None:
    s = self.s
    for u in self.users:
      for tr in s.trackers:
        for kind in s.kinds:
          self.record("matrix", None, "no cloak", u, tr, kind,
                      self.track(tr, kind, u, self.splits[u].train))
    for models in s.user_models:
      config = s.base_config(models)
      for u in self.users:
        cloaked = self.cloaked_samples(config, u)
        for tr in s.trackers:
          for kind in s.kinds:
            self.record("matrix", config, f"user model {models}", u, tr, kind,
                        self.track(tr, kind, u, cloaked), user_model=models)
      self.quality("matrix", config)

  def exp_transfer(self) -> None:
    """Leave one model out: does a cloak fool a recognizer it was not optimised on?

    For each held-out model M: U's photos cloaked with the ensemble of all
    other models ("transfer") and with all models including M ("white-box"),
    both measured by trackers on M through every tracker pipeline, beside the
    clean baseline of the same trackers. Each record also carries every
    model's verdict on the written files (feature shift, share fooled).
    """
    s = self.s
    folds = leave_one_out(s.transfer_set())
    everyone = folds[0].white_box
    white = s.base_config("+".join(everyone))
    self.info["transfer_models"] = list(everyone)
    for fold in folds:
      if s.held_out and fold.held_out not in s.held_out:
        continue
      transfer = s.base_config("+".join(fold.transfer))
      for u in self.users:
        roles = []
        for role, config, members in (("transfer", transfer, fold.transfer),
                                      ("white-box", white, everyone)):
          rows = [c for c in self.cloak(config, u) if c.sample is not None]
          verdicts = {m: self._verdict(m, rows) for m in everyone}
          roles.append((role, config, members, rows, {
              "member_shift": {m: v[0] for m, v in verdicts.items()},
              "member_fooled": {m: v[1] for m, v in verdicts.items()}, **_member_summary(rows)}))
        for pipe in s.tracker_pipelines:
          tr = pipelines.spec(fold.held_out, pipe)
          common = {"held_out": fold.held_out, "pipeline": pipe}
          for kind in s.kinds:
            self.record("transfer", None, "no cloak", u, tr, kind,
                        self.track(tr, kind, u, self.splits[u].train), role="clean",
                        cloak_models="", **common)
          for role, config, members, rows, verdicts in roles:
            shift, fooled = self._verdict(tr, rows)
            extra = dict(common, role=role, cloak_models="+".join(members), heldout_shift=shift,
                         heldout_fooled=fooled, **verdicts)
            for kind in s.kinds:
              self.record("transfer", config, f"{role}: cloak {'+'.join(members)}", u, tr, kind,
                          self.track(tr, kind, u, [c.sample for c in rows]), **extra)
      self.quality("transfer", transfer)
      self.runner.release(transfer)  # never used again
      self._checkpoint()  # each fold reported as it ends
    self.quality("transfer", white)
    self.info["tracker_pipelines"] = self.features.pipelines.stats()

  def exp_knobs(self) -> None:
    """Each transfer technique on and off: the base cloak (first user model) and
    one variant per knob, on the same users, splits and targets' pool, judged
    by every tracker (held out where its extractor is not in the variant's
    ensemble) and by what people see on the written files."""
    s = self.s
    for u in self.users:
      for tr in s.trackers:
        for kind in s.kinds:
          self.record("knobs", None, "no cloak", u, tr, kind,
                      self.track(tr, kind, u, self.splits[u].train), knob="no cloak")
    for knob in ("base",) + tuple(s.knobs):
      config = s.base_config() if knob == "base" else s.knob_config(knob)
      for u in self.users:
        rows = [c for c in self.cloak(config, u) if c.sample is not None]
        for tr in s.trackers:
          shift, fooled = self._verdict(tr, rows)
          held_out = pipelines.parse(tr)[0] not in config.extractors
          for kind in s.kinds:
            self.record("knobs", config, knob, u, tr, kind,
                        self.track(tr, kind, u, [c.sample for c in rows]), knob=knob,
                        held_out=held_out, tracker_shift=shift, tracker_fooled=fooled)
      self.quality("knobs", config, knob=knob)
      self._checkpoint()  # a long table reports each row as it is measured

  def exp_frontier(self) -> None:
    """Protection against visibility, family by family (issue 22's yardstick).

    Every family is swept over the strength points; at each point U's photos are
    cloaked without the held-out models, and each tracker (the held-out ones,
    then the cloak's own members: white-box) records PSR and the share of the
    gap to the nearest other identity that the cloak closed (`gap_closed`,
    metrics.gap_closed), a figure that moves long before PSR does. The point's
    quality record carries what people see on the written files and the cost.
    """
    s = self.s
    held = tuple(s.frontier_held_out)
    for u in self.users:
      for tr in held:
        for kind in s.kinds:
          self.record("frontier", None, "no cloak", u, tr, kind,
                      self.track(tr, kind, u, self.splits[u].train), family="no cloak",
                      point="", role="held-out")
    for family in s.frontier_families:
      for point in s.frontier_points:
        config = s.frontier_config(family, point)
        members = tuple(pipelines.spec(m, pipelines.DEFAULT) for m in config.extractors)
        for u in self.users:
          rows = [c for c in self.cloak(config, u) if c.sample is not None]
          for tr, role in [(t, "held-out") for t in held] + [(t, "white-box") for t in members]:
            gap = self._gap_closed(tr, u, rows)
            for kind in s.kinds:
              self.record("frontier", config, f"{family} @ {point}", u, tr, kind,
                          self.track(tr, kind, u, [c.sample for c in rows]), family=family,
                          point=point, role=role, gap_closed=gap)
        self.quality("frontier", config, family=family, point=point)
        self.runner.release(config)
        self._checkpoint()  # each point reported as it is measured

  def _gap_closed(self, tracker: str, user: str, rows: Sequence[Cloaked]) -> float | None:
    """metrics.gap_closed of U's cloaked photos in the tracker's space: U's centroid
    from U's clean test photos, the others' from their train photos."""
    if not rows:
      return None
    own = metrics.unit_centroid(self.features(tracker, self.splits[user].test))
    others = np.stack([metrics.unit_centroid(self.features(tracker, self.splits[n].train))
                       for n in sorted(self.samples) if n != user and self.splits[n].train])
    clean = self.features(tracker, [c.source for c in rows])
    cloaked = self.features(tracker, [c.sample for c in rows])
    return metrics.gap_closed(clean, cloaked, own, others)

  def _verdict(self, tracker: str, rows: Sequence[Cloaked]) -> tuple[float | None, float | None]:
    """A model's view of the written cloaks: mean L2 move of its unit features from
    the original's, and the share it no longer matches to the original (distance
    above its same-person threshold; None for models without one)."""
    if not rows:
      return None, None
    a = self.features(tracker, [c.sample for c in rows])
    b = self.features(tracker, [c.source for c in rows])
    d = np.linalg.norm(a - b, axis=1)
    ext = getattr(self.features.embedder(tracker), "extractor", None)
    t = getattr(ext, "same_person_distance", None)
    return float(np.mean(d)), (float(np.mean(d > t)) if t is not None else None)

  def exp_budget(self) -> None:
    s = self.s
    for b in s.budgets:
      config = s.base_config(budget=b)
      for u in self.users:
        cloaked = self.cloaked_samples(config, u)
        for tr in s.trackers:
          for kind in s.kinds:
            self.record("budget", config, f"budget {b:g}", u, tr, kind,
                        self.track(tr, kind, u, cloaked), budget=b)
      self.quality("budget", config)

  def exp_leakage(self) -> None:
    s = self.s
    config = s.base_config()
    for u in self.users:
      pairs = [(c.sample, c.source) for c in self.cloak(config, u) if c.sample is not None]
      order = np.random.default_rng([s.seed, 7]).permutation(len(pairs))
      for leak in s.leaks:
        k = int(round(leak * len(pairs)))
        leaked = set(order[:k].tolist())
        train = [src if i in leaked else clk for i, (clk, src) in enumerate(pairs)]
        for tr in s.trackers:
          for kind in s.kinds:
            self.record("leakage", config, f"leak {leak:g}", u, tr, kind,
                        self.track(tr, kind, u, train), leak=leak, leaked=k)

  def exp_transforms(self) -> None:
    s = self.s
    config = s.base_config()
    ts = [transforms_lib.parse(t) for t in s.transforms]
    for u in self.users:
      cloaked = self.cloaked_samples(config, u)
      for tr in s.focus():
        for kind in s.kinds:
          self.record("transforms", config, "none", u, tr, kind, self.track(tr, kind, u, cloaked),
                      transform="none")
          for t in ts:
            # The tracker's normal accuracy under the transform comes with the same run.
            self.record("transforms", config, t.label, u, tr, kind,
                        self.track(tr, kind, u, cloaked, transform=t), transform=t.label)

  def exp_robust(self) -> None:
    s = self.s
    config = s.base_config()
    for u in self.users:
      cloaked = self.cloaked_samples(config, u)
      for tr in s.trackers:
        kinds = [("probe", "standard probe"),
                 ("robust", f"PGD on probe input features, L2 eps {s.robust_eps:g}")]
        if s.robust_crop_eps > 0 and not tr.startswith(trackers.INSIGHTFACE_PREFIX):
          kinds.append(("robust-crop", f"PGD on crop pixels, Linf eps {s.robust_crop_eps:.4g}"))
        for kind, setting in kinds:
          self.record("robust", config, setting, u, tr, kind, self.track(tr, kind, u, cloaked))

  def exp_adaptive(self) -> None:
    s = self.s
    config = s.base_config()
    # The tracker has the cloaking tool: it cloaks photos of identities it can
    # label (other users, and a few photos of every other identity) and trains
    # on them with their true labels.
    own = {}
    if s.adaptive_photos:
      groups = {n: self.splits[n].train[:s.adaptive_photos] for n in sorted(self.samples)
                if n not in self.users}
      self.log(f"cloaking {sum(map(len, groups.values()))} photos of {len(groups)} other "
               f"identities for the adaptive tracker")
      own = self.runner.cloak_users(config, groups)
    for u in self.users:
      extra: list[tuple[Sample, int]] = []
      for v in self.users:
        if v != u:
          extra += [(x, self.label[v]) for x in self.cloaked_samples(config, v)]
      for n, got in own.items():
        if n != u:
          extra += [(c.sample, self.label[n]) for c in got if c.sample is not None]
      cloaked = self.cloaked_samples(config, u)
      for tr in s.trackers:
        for kind in s.kinds:
          self.record("adaptive", config, "standard", u, tr, kind, self.track(tr, kind, u, cloaked))
          self.record("adaptive", config, "adaptive (+cloaked labelled photos)", u, tr, kind,
                      self.track(tr, kind, u, cloaked, extra=extra), adaptive_extra=len(extra))

  def exp_finetune(self) -> None:
    s = self.s
    config = s.base_config()
    for u in self.users:
      cloaked = self.cloaked_samples(config, u)
      for tr in s.focus():
        layers = trackers.FINETUNE_LAYERS.get(pipelines.parse(tr)[0])
        if tr.startswith(trackers.INSIGHTFACE_PREFIX) or not layers:
          continue  # only ported models with declared last layers can be fine-tuned
        t = time.time()
        self.record("finetune", config, f"last layers {','.join(layers)} "
                    f"+ head, {s.finetune_epochs} epochs", u, tr, "finetune",
                    self.track(tr, "finetune", u, cloaked), seconds=round(time.time() - t, 1))

  def exp_detection(self) -> None:
    s = self.s
    variants = [("none", {}), ("stop 0.2", {"stop_fraction": 0.2}),
                ("average target", {"target_choice": "average"}),
                ("stop 0.2 + average target", {"stop_fraction": 0.2, "target_choice": "average"})]
    for name, overrides in variants:
      config = s.base_config(**overrides)
      for u in self.users:
        rows = [c for c in self.cloak(config, u) if c.sample is not None]
        target = next((c.target for c in rows if c.target), None)
        for tr in s.trackers:
          cl = self.features(tr, [c.sample for c in rows])
          others = [self.features(tr, self.splits[n].train + self.splits[n].test)
                    for n in sorted(self.samples) if n != u]
          rec = {"experiment": "detection", "config": config_label(config), "setting": name,
                 "user": u, "tracker": tr, "target": target, "cloaked_photos": len(rows)}
          if target is not None and target in self.pool_samples:
            tf = self.features(tr, self.pool_samples[target])
            rec["without_originals"] = metrics.target_proximity(cl, tf, others)
            rec["target_photos"] = len(tf)
          clean = self.features(tr, self.splits[u].test)
          mixed = np.concatenate([cl, clean])
          mask = np.r_[np.ones(len(cl), bool), np.zeros(len(clean), bool)]
          rec["with_originals"] = metrics.cluster_split(mixed, others, cloaked_mask=mask)
          rec["clean_photos"] = len(clean)
          self.records.append(rec)
      self.quality("detection", config)


def _visibility(rows: Sequence[Cloaked]) -> dict:
  """What people see on the written files: the worst face's SSIMULACRA2 (higher
  is better) and worst eye-sized block DSSIM, and their means."""
  s2 = [c.ssimulacra2 for c in rows if c.ssimulacra2 is not None]
  wb = [c.worst_block for c in rows if c.worst_block is not None]
  return {"ssimulacra2_min": float(np.min(s2)) if s2 else None,
          "ssimulacra2_mean": float(np.mean(s2)) if s2 else None,
          "ssimulacra2_median": float(np.median(s2)) if s2 else None,
          "worst_block_max": float(np.max(wb)) if wb else None,
          "worst_block_mean": float(np.mean(wb)) if wb else None}


def _member_summary(rows: Sequence[Cloaked]) -> dict:
  """The loop's own per-member figures (float patch), where the engine reports them."""
  out = {}
  for key, field in (("loop_member_distances", "member_distances"),
                     ("loop_member_fooled", "member_fooled")):
    got = [getattr(c, field) for c in rows if getattr(c, field)]
    if got:
      out[key] = {m: float(np.mean([g[m] for g in got if m in g])) for m in got[0]}
  return out


def _seed(seed: int, key: str, copy: int) -> list[int]:
  import zlib
  return [seed, zlib.crc32(key.encode()), copy]
