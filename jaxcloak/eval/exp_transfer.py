"""Transfer experiments: does a cloak fool recognizers it was not optimised on?

`transfer` (leave one model out: cloak with the other models' ensemble, track
with the held-out one, through each tracker pipeline; beside the white-box
ensemble of all of them) and `knobs` (each transfer technique on and off
against the base cloak, judged by held-out trackers and by what people see;
opt-in).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxcloak.eval import pipelines
from jaxcloak.eval.cloaking import Cloaked
from jaxcloak.eval.context import Context


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


def transfer(ev: Context) -> None:
  """Leave one model out: does a cloak fool a recognizer it was not optimised on?

  For each held-out model M: U's photos cloaked with the ensemble of all
  other models ("transfer") and with all models including M ("white-box"),
  both measured by trackers on M through every tracker pipeline, beside the
  clean baseline of the same trackers. Each record also carries every
  model's verdict on the written files (feature shift, share fooled).
  """
  s = ev.s
  folds = leave_one_out(s.transfer_set())
  everyone = folds[0].white_box
  white = s.base_config("+".join(everyone))
  ev.info["transfer_models"] = list(everyone)
  for fold in folds:
    if s.held_out and fold.held_out not in s.held_out:
      continue
    transfer = s.base_config("+".join(fold.transfer))
    for u in ev.users:
      roles = []
      for role, config, members in (("transfer", transfer, fold.transfer),
                                    ("white-box", white, everyone)):
        rows = [c for c in ev.cloak(config, u) if c.sample is not None]
        verdicts = {m: _verdict(ev, m, rows) for m in everyone}
        roles.append((role, config, members, rows, {
            "member_shift": {m: v[0] for m, v in verdicts.items()},
            "member_fooled": {m: v[1] for m, v in verdicts.items()}, **_member_summary(rows)}))
      for pipe in s.tracker_pipelines:
        tr = pipelines.spec(fold.held_out, pipe)
        common = {"held_out": fold.held_out, "pipeline": pipe}
        for kind in s.kinds:
          ev.record("transfer", None, "no cloak", u, tr, kind,
                    ev.track(tr, kind, u, ev.splits[u].train), role="clean",
                    cloak_models="", **common)
        for role, config, members, rows, verdicts in roles:
          shift, fooled = _verdict(ev, tr, rows)
          extra = dict(common, role=role, cloak_models="+".join(members), heldout_shift=shift,
                       heldout_fooled=fooled, **verdicts)
          for kind in s.kinds:
            ev.record("transfer", config, f"{role}: cloak {'+'.join(members)}", u, tr, kind,
                      ev.track(tr, kind, u, [c.sample for c in rows]), **extra)
    ev.quality("transfer", transfer)
    ev.runner.release(transfer)  # never used again
    ev.checkpoint()  # each fold reported as it ends
  ev.quality("transfer", white)
  ev.info["tracker_pipelines"] = ev.features.pipelines.stats()


def knobs(ev: Context) -> None:
  """Each transfer technique on and off: the base cloak (first user model) and
  one variant per knob, on the same users, splits and targets' pool, judged
  by every tracker (held out where its extractor is not in the variant's
  ensemble) and by what people see on the written files."""
  s = ev.s
  for u in ev.users:
    for tr in s.trackers:
      for kind in s.kinds:
        ev.record("knobs", None, "no cloak", u, tr, kind,
                  ev.track(tr, kind, u, ev.splits[u].train), knob="no cloak")
  for knob in ("base",) + tuple(s.knobs):
    config = s.base_config() if knob == "base" else s.knob_config(knob)
    for u in ev.users:
      rows = [c for c in ev.cloak(config, u) if c.sample is not None]
      for tr in s.trackers:
        shift, fooled = _verdict(ev, tr, rows)
        held_out = pipelines.parse(tr)[0] not in config.extractors
        for kind in s.kinds:
          ev.record("knobs", config, knob, u, tr, kind,
                    ev.track(tr, kind, u, [c.sample for c in rows]), knob=knob,
                    held_out=held_out, tracker_shift=shift, tracker_fooled=fooled)
    ev.quality("knobs", config, knob=knob)
    ev.checkpoint()  # a long table reports each row as it is measured


def _verdict(ev: Context, tracker: str,
             rows: Sequence[Cloaked]) -> tuple[float | None, float | None]:
  """A model's view of the written cloaks: mean L2 move of its unit features from
  the original's, and the share it no longer matches to the original (distance
  above its same-person threshold; None for models without one)."""
  if not rows:
    return None, None
  a = ev.features(tracker, [c.sample for c in rows])
  b = ev.features(tracker, [c.source for c in rows])
  d = np.linalg.norm(a - b, axis=1)
  ext = getattr(ev.features.embedder(tracker), "extractor", None)
  t = getattr(ext, "same_person_distance", None)
  return float(np.mean(d)), (float(np.mean(d > t)) if t is not None else None)


def _member_summary(rows: Sequence[Cloaked]) -> dict:
  """The loop's own per-member figures (float patch), where the engine reports them."""
  out = {}
  for key, field in (("loop_member_distances", "member_distances"),
                     ("loop_member_fooled", "member_fooled")):
    got = [getattr(c, field) for c in rows if getattr(c, field)]
    if got:
      out[key] = {m: float(np.mean([g[m] for g in got if m in g])) for m in got[0]}
  return out
