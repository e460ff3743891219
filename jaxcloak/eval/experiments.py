"""The evaluation experiments (Fawkes §5-§8, transfer, knobs, frontier), as
records of counts and rates: each by its --experiments name, and the run that
checks the settings, then calls the chosen ones in order on the shared Context.

The experiments live by topic: the paper's own (`matrix`, `budget`,
`leakage`, `transforms`, `robust`, `adaptive`, `finetune`, `detection`) in
exp_paper.py, `transfer` and `knobs` in exp_transfer.py, `frontier` in
exp_frontier.py; the setup they share (data, splits, trackers, cloaks) in
context.py.
"""

from __future__ import annotations

import time
from typing import Callable

from jaxcloak.eval import exp_frontier, exp_paper, exp_transfer, pipelines
from jaxcloak.eval.context import Context
from jaxcloak.eval.exp_transfer import leave_one_out
from jaxcloak.eval.settings import EXPERIMENTS

# Each experiment's function, by name (EXPERIMENTS holds the names and their order).
EXPERIMENT_FUNCTIONS = {
    "matrix": exp_paper.matrix, "transfer": exp_transfer.transfer,
    "frontier": exp_frontier.frontier, "knobs": exp_transfer.knobs, "budget": exp_paper.budget,
    "leakage": exp_paper.leakage, "robust": exp_paper.robust, "adaptive": exp_paper.adaptive,
    "detection": exp_paper.detection, "transforms": exp_paper.transforms,
    "finetune": exp_paper.finetune}


class Evaluation(Context):
  """Holds the loaded data and runs the experiments; `records` collects results."""

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
    self.checkpoint = after_each or (lambda: None)
    for name in dict.fromkeys(s.experiments):
      t = time.time()
      self.log(f"experiment {name}")
      EXPERIMENT_FUNCTIONS[name](self)
      self.info.setdefault("experiment_seconds", {})[name] = round(time.time() - t, 1)
      self.info["seconds"] = round(time.time() - self.t0, 1)
      if after_each is not None:
        after_each()
    return self.records
