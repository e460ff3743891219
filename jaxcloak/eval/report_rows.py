"""The evaluation's per-user records grouped into report rows (tables and plots read these).

A row holds a rate's mean and std over users and the pooled counts behind it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from jaxcloak.eval.metrics import bootstrap_interval, summarize


def aggregate(records: Sequence[dict], experiment: str,
              keys=("config", "setting", "tracker", "kind")) -> list[dict]:
  """Groups one experiment's per-user records; mean/std over users plus pooled counts."""
  groups: "OrderedDict[tuple, list]" = OrderedDict()
  for r in records:
    if r.get("experiment") == experiment and "psr_n" in r:
      groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for key, rs in groups.items():
    p, a = summarize([r["psr"] for r in rs]), summarize([r["acc"] for r in rs])
    row = dict(zip(keys, key))
    row.update({"users": len(rs), "psr_mean": p["mean"], "psr_std": p["std"],
                "psr_k": sum(r["psr_k"] for r in rs), "psr_n": sum(r["psr_n"] for r in rs),
                "acc_mean": a["mean"], "acc_std": a["std"],
                "acc_k": sum(r["acc_k"] for r in rs), "acc_n": sum(r["acc_n"] for r in rs)})
    for extra in ("budget", "leak", "transform", "user_model"):
      if extra in rs[0]:
        row[extra] = rs[0][extra]
    out.append(row)
  return out


def frontier_points(records: Sequence[dict]) -> list[dict]:
  """One row per (family, point) of the frontier experiment: per role and kind the
  mean over users of PSR (a user's value: the mean over that role's trackers) with
  a bootstrap interval over users, the gap closed per held-out tracker (the median
  over users), and the
  point's quality record (visibility, cost)."""
  recs = [r for r in records if r.get("experiment") == "frontier"]
  quality = {(r["family"], r["point"]): r for r in records
             if r.get("experiment") == "quality" and r.get("for") == "frontier"}
  out = []
  for fam, point in OrderedDict.fromkeys((r["family"], r["point"]) for r in recs):
    mine = [r for r in recs if r["family"] == fam and r["point"] == point]
    row = {"family": fam, "point": point, "config": mine[0]["config"],
           "quality": quality.get((fam, point), {})}
    for role in OrderedDict.fromkeys(r["role"] for r in mine):
      for kind in OrderedDict.fromkeys(r["kind"] for r in mine):
        per_user: "OrderedDict[str, list]" = OrderedDict()
        for r in mine:
          if r["role"] == role and r["kind"] == kind:
            per_user.setdefault(r["user"], []).append(r["psr"])
        values = [float(np.mean(v)) for v in per_user.values()]
        lo, hi = bootstrap_interval(values)
        row[f"{role} {kind}"] = {"mean": float(np.mean(values)), "lo": lo, "hi": hi,
                                 "users": len(values)}
    gaps: "OrderedDict[str, list]" = OrderedDict()
    for r in mine:
      if r["role"] == "held-out" and r.get("gap_closed") is not None and r["kind"] == mine[0]["kind"]:
        gaps.setdefault(r["tracker"], []).append(r["gap_closed"])
    row["gap_closed"] = {t: float(np.median(v)) for t, v in gaps.items()}  # over users
    out.append(row)
  return out
