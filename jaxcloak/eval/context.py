"""The state every evaluation experiment shares, and the pieces they measure with.

Setup, for each protected user U among DATA's identities: U's photos split
into a train part (cloaked by jaxcloak) and a clean test part. The tracker
trains on U's train part as written to disk (cloaked), every other DATA
identity's clean train photos, and optionally background identities from the
pool; it then classifies U's clean test photos (PSR) and the other
identities' test photos (normal accuracy). Every record carries the counts
behind its rates.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from jaxcloak.config import CloakConfig
from jaxcloak.eval import dataset, metrics, trackers
from jaxcloak.eval import transforms as transforms_lib
from jaxcloak.eval.cloaking import CloakRunner, Cloaked, config_label, pool_identity_features
from jaxcloak.eval.dataset import Sample
from jaxcloak.eval.features import FeatureStore
from jaxcloak.eval.settings import Settings


class Context:
  """Holds the loaded data, splits, features and cloaks; `records` collects results."""

  def __init__(self, settings: Settings, *, log: Callable[[str], None] = print):
    self.s = settings
    self.t0 = time.time()
    self._log = log
    self.records: list[dict] = []
    self.info: dict = {}
    self._cloaked: dict = {}
    # Called by a long experiment after each part it measures (the run sets it to
    # rewrite the report, so partial results come early).
    self.checkpoint: Callable[[], None] = lambda: None

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


def _seed(seed: int, key: str, copy: int) -> list[int]:
  import zlib
  return [seed, zlib.crc32(key.encode()), copy]
