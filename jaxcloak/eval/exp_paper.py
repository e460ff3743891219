"""The Fawkes paper's experiments (§5-§8), each a function of the shared Context.

`matrix` (user model x tracker extractor), `budget` (PSR vs DSSIM budget, Fig.
16), `leakage` (share of U's tracker photos left uncloaked), `transforms`
(blur / noise / JPEG / augmentation of the tracker's photos), `robust` (probe
adversarially trained with PGD on its input features), `adaptive` (the tracker
adds cloaked photos of identities it knows to its training set, Radiya-Dixit et
al. 2022), `finetune` (the extractor's last layers trained too) and `detection`
(§8.2, with and without mitigations).
"""

from __future__ import annotations

import time

import numpy as np

from jaxcloak.eval import metrics, pipelines, trackers
from jaxcloak.eval import transforms as transforms_lib
from jaxcloak.eval.cloaking import config_label
from jaxcloak.eval.context import Context
from jaxcloak.eval.dataset import Sample


def matrix(ev: Context) -> None:
  s = ev.s
  for u in ev.users:
    for tr in s.trackers:
      for kind in s.kinds:
        ev.record("matrix", None, "no cloak", u, tr, kind,
                  ev.track(tr, kind, u, ev.splits[u].train))
  for models in s.user_models:
    _every_tracker(ev, "matrix", s.base_config(models), f"user model {models}",
                   user_model=models)


def budget(ev: Context) -> None:
  for b in ev.s.budgets:
    _every_tracker(ev, "budget", ev.s.base_config(budget=b), f"budget {b:g}", budget=b)


def _every_tracker(ev: Context, experiment: str, config, setting: str, **extra) -> None:
  """Each user cloaked with `config`, judged by every tracker and kind; then its quality."""
  for u in ev.users:
    cloaked = ev.cloaked_samples(config, u)
    for tr in ev.s.trackers:
      for kind in ev.s.kinds:
        ev.record(experiment, config, setting, u, tr, kind, ev.track(tr, kind, u, cloaked),
                  **extra)
  ev.quality(experiment, config)


def leakage(ev: Context) -> None:
  s = ev.s
  config = s.base_config()
  for u in ev.users:
    pairs = [(c.sample, c.source) for c in ev.cloak(config, u) if c.sample is not None]
    order = np.random.default_rng([s.seed, 7]).permutation(len(pairs))
    for leak in s.leaks:
      k = int(round(leak * len(pairs)))
      leaked = set(order[:k].tolist())
      train = [src if i in leaked else clk for i, (clk, src) in enumerate(pairs)]
      for tr in s.trackers:
        for kind in s.kinds:
          ev.record("leakage", config, f"leak {leak:g}", u, tr, kind,
                    ev.track(tr, kind, u, train), leak=leak, leaked=k)


def transforms(ev: Context) -> None:
  s = ev.s
  config = s.base_config()
  ts = [transforms_lib.parse(t) for t in s.transforms]
  for u in ev.users:
    cloaked = ev.cloaked_samples(config, u)
    for tr in s.focus():
      for kind in s.kinds:
        ev.record("transforms", config, "none", u, tr, kind, ev.track(tr, kind, u, cloaked),
                  transform="none")
        for t in ts:
          # The tracker's normal accuracy under the transform comes with the same run.
          ev.record("transforms", config, t.label, u, tr, kind,
                    ev.track(tr, kind, u, cloaked, transform=t), transform=t.label)


def robust(ev: Context) -> None:
  s = ev.s
  config = s.base_config()
  for u in ev.users:
    cloaked = ev.cloaked_samples(config, u)
    for tr in s.trackers:
      kinds = [("probe", "standard probe"),
               ("robust", f"PGD on probe input features, L2 eps {s.robust_eps:g}")]
      if s.robust_crop_eps > 0 and not tr.startswith(trackers.INSIGHTFACE_PREFIX):
        kinds.append(("robust-crop", f"PGD on crop pixels, Linf eps {s.robust_crop_eps:.4g}"))
      for kind, setting in kinds:
        ev.record("robust", config, setting, u, tr, kind, ev.track(tr, kind, u, cloaked))


def adaptive(ev: Context) -> None:
  s = ev.s
  config = s.base_config()
  # The tracker has the cloaking tool: it cloaks photos of identities it can
  # label (other users, and a few photos of every other identity) and trains
  # on them with their true labels.
  own = {}
  if s.adaptive_photos:
    groups = {n: ev.splits[n].train[:s.adaptive_photos] for n in sorted(ev.samples)
              if n not in ev.users}
    ev.log(f"cloaking {sum(map(len, groups.values()))} photos of {len(groups)} other "
           f"identities for the adaptive tracker")
    own = ev.runner.cloak_users(config, groups)
  for u in ev.users:
    extra: list[tuple[Sample, int]] = []
    for v in ev.users:
      if v != u:
        extra += [(x, ev.label[v]) for x in ev.cloaked_samples(config, v)]
    for n, got in own.items():
      if n != u:
        extra += [(c.sample, ev.label[n]) for c in got if c.sample is not None]
    cloaked = ev.cloaked_samples(config, u)
    for tr in s.trackers:
      for kind in s.kinds:
        ev.record("adaptive", config, "standard", u, tr, kind, ev.track(tr, kind, u, cloaked))
        ev.record("adaptive", config, "adaptive (+cloaked labelled photos)", u, tr, kind,
                  ev.track(tr, kind, u, cloaked, extra=extra), adaptive_extra=len(extra))


def finetune(ev: Context) -> None:
  s = ev.s
  config = s.base_config()
  for u in ev.users:
    cloaked = ev.cloaked_samples(config, u)
    for tr in s.focus():
      layers = trackers.FINETUNE_LAYERS.get(pipelines.parse(tr)[0])
      if tr.startswith(trackers.INSIGHTFACE_PREFIX) or not layers:
        continue  # only ported models with declared last layers can be fine-tuned
      t = time.time()
      ev.record("finetune", config, f"last layers {','.join(layers)} "
                f"+ head, {s.finetune_epochs} epochs", u, tr, "finetune",
                ev.track(tr, "finetune", u, cloaked), seconds=round(time.time() - t, 1))


def detection(ev: Context) -> None:
  s = ev.s
  variants = [("none", {}), ("stop 0.2", {"stop_fraction": 0.2}),
              ("average target", {"target_choice": "average"}),
              ("stop 0.2 + average target", {"stop_fraction": 0.2, "target_choice": "average"})]
  for name, overrides in variants:
    config = s.base_config(**overrides)
    for u in ev.users:
      rows = [c for c in ev.cloak(config, u) if c.sample is not None]
      target = next((c.target for c in rows if c.target), None)
      for tr in s.trackers:
        cl = ev.features(tr, [c.sample for c in rows])
        others = [ev.features(tr, ev.splits[n].train + ev.splits[n].test)
                  for n in sorted(ev.samples) if n != u]
        rec = {"experiment": "detection", "config": config_label(config), "setting": name,
               "user": u, "tracker": tr, "target": target, "cloaked_photos": len(rows)}
        if target is not None and target in ev.pool_samples:
          tf = ev.features(tr, ev.pool_samples[target])
          rec["without_originals"] = metrics.target_proximity(cl, tf, others)
          rec["target_photos"] = len(tf)
        clean = ev.features(tr, ev.splits[u].test)
        mixed = np.concatenate([cl, clean])
        mask = np.r_[np.ones(len(cl), bool), np.zeros(len(clean), bool)]
        rec["with_originals"] = metrics.cluster_split(mixed, others, cloaked_mask=mask)
        rec["clean_photos"] = len(clean)
        ev.records.append(rec)
    ev.quality("detection", config)
