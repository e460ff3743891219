"""The frontier: protection against visibility, cloak family by family, at each
strength point (issue 22's yardstick; BUILD.md, "The frontier").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxcloak.eval import metrics, pipelines
from jaxcloak.eval.cloaking import Cloaked
from jaxcloak.eval.context import Context


def frontier(ev: Context) -> None:
  """Protection against visibility, family by family (issue 22's yardstick).

  Every family is swept over the strength points; at each point U's photos are
  cloaked without the held-out models, and each tracker (the held-out ones,
  then the cloak's own members: white-box) records PSR and the share of the
  gap to the nearest other identity that the cloak closed (`gap_closed`,
  metrics.gap_closed), a figure that moves long before PSR does. The point's
  quality record carries what people see on the written files and the cost.
  """
  s = ev.s
  held = tuple(s.frontier_held_out)
  for u in ev.users:
    for tr in held:
      for kind in s.kinds:
        ev.record("frontier", None, "no cloak", u, tr, kind,
                  ev.track(tr, kind, u, ev.splits[u].train), family="no cloak",
                  point="", role="held-out")
  for family in s.frontier_families:
    for point in s.frontier_points:
      config = s.frontier_config(family, point)
      members = tuple(pipelines.spec(m, pipelines.DEFAULT) for m in config.extractors)
      for u in ev.users:
        rows = [c for c in ev.cloak(config, u) if c.sample is not None]
        for tr, role in [(t, "held-out") for t in held] + [(t, "white-box") for t in members]:
          gap = _gap_closed(ev, tr, u, rows)
          for kind in s.kinds:
            ev.record("frontier", config, f"{family} @ {point}", u, tr, kind,
                      ev.track(tr, kind, u, [c.sample for c in rows]), family=family,
                      point=point, role=role, gap_closed=gap)
      ev.quality("frontier", config, family=family, point=point)
      ev.runner.release(config)
      ev.checkpoint()  # each point reported as it is measured


def _gap_closed(ev: Context, tracker: str, user: str, rows: Sequence[Cloaked]) -> float | None:
  """metrics.gap_closed of U's cloaked photos in the tracker's space: U's centroid
  from U's clean test photos, the others' from their train photos."""
  if not rows:
    return None
  own = metrics.unit_centroid(ev.features(tracker, ev.splits[user].test))
  others = np.stack([metrics.unit_centroid(ev.features(tracker, ev.splits[n].train))
                     for n in sorted(ev.samples) if n != user and ev.splits[n].train])
  clean = ev.features(tracker, [c.source for c in rows])
  cloaked = ev.features(tracker, [c.sample for c in rows])
  return metrics.gap_closed(clean, cloaked, own, others)
