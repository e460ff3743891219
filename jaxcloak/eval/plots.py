"""The evaluation report's PNG plots (matplotlib, Agg), one function per plot."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxcloak.eval.metrics import summarize
from jaxcloak.eval.report_rows import aggregate, frontier_points


def write_plots(out_dir: Path, records: Sequence[dict], drawn: dict | None = None) -> list[Path]:
  """PNG plots with matplotlib (Agg); returns their files.

  `drawn` (plot -> digest of its rows, files), kept across calls, skips a plot
  whose rows are those it was last drawn from (drawing is most of a quick run's
  report time, and a run rewrites its report after each experiment).
  """
  plots = _Plots(out_dir, {} if drawn is None else drawn)
  for draw in (_budget, _matrix, _transfer, _frontier, _leakage, _transforms, _detection):
    draw(plots, records)
  return plots.written


class _Plots:
  """One report call's plots: skips those whose rows did not change, collects the files."""

  def __init__(self, out_dir: Path, drawn: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    self.plt, self.out_dir, self.drawn = plt, out_dir, drawn
    self.written: list[Path] = []
    self.block = None  # the plot being drawn

  def unchanged(self, name, *rows) -> bool:
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    prev = self.drawn.get(name)
    if prev and prev[0] == digest and all(p.exists() for p in prev[1]):
      self.written.extend(prev[1])
      return True
    self.drawn[name], self.block = (digest, []), name
    return False

  def subplots(self, *args, **kwargs):
    return self.plt.subplots(*args, **kwargs)

  def save(self, fig, name, rect=None):
    """rect: the part of the figure the axes may fill (room left for a figure legend)."""
    path = self.out_dir / name
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    self.plt.close(fig)
    self.written.append(path)
    self.drawn[self.block][1].append(path)


def _psr_lines(plots: _Plots, rows, x_of, xlabel: str, title: str, name: str,
               order=None) -> None:
  """PSR (mean +- std over users) against x_of(row), one line per tracker and kind, its
  points in `order` (default: x)."""
  fig, ax = plots.subplots(figsize=(6, 4))
  for (tr, kind) in OrderedDict.fromkeys((r["tracker"], r["kind"]) for r in rows):
    rs = sorted((r for r in rows if r["tracker"] == tr and r["kind"] == kind), key=order or x_of)
    ax.errorbar([x_of(r) for r in rs], [r["psr_mean"] for r in rs],
                yerr=[r["psr_std"] for r in rs], marker="o", capsize=3, label=f"{tr} {kind}")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("PSR")
  ax.set_ylim(-0.05, 1.05)
  ax.legend(fontsize=7)
  ax.set_title(title)
  plots.save(fig, name)


def _budget(plots: _Plots, records: Sequence[dict]) -> None:
  """PSR against measured DSSIM, one line per tracker (paper Fig. 16)."""
  rows = aggregate(records, "budget")
  quality = {r["config"]: r for r in records if r.get("experiment") == "quality"}
  if not rows or plots.unchanged("budget", rows, quality):
    return
  _psr_lines(plots, rows, lambda r: quality.get(r["config"], {}).get("dssim_mean") or r["budget"],
             "mean DSSIM of written cloaked faces", "PSR vs DSSIM", "psr_vs_dssim.png",
             order=lambda r: r["budget"])


def _matrix(plots: _Plots, records: Sequence[dict]) -> None:
  """The PSR matrix as a heat map, one per tracker kind."""
  rows = aggregate(records, "matrix")
  if not rows or plots.unchanged("matrix", rows):
    return
  for kind in OrderedDict.fromkeys(r["kind"] for r in rows):
    rs = [r for r in rows if r["kind"] == kind]
    users = list(OrderedDict.fromkeys(r["setting"] for r in rs))
    trs = list(OrderedDict.fromkeys(r["tracker"] for r in rs))
    m = np.full((len(users), len(trs)), np.nan)
    for r in rs:
      m[users.index(r["setting"]), trs.index(r["tracker"])] = r["psr_mean"]
    fig, ax = plots.subplots(figsize=(1.8 + 1.4 * len(trs), 1.2 + 0.6 * len(users)))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(trs)), trs, rotation=30, ha="right")
    ax.set_yticks(range(len(users)), users)
    for i in range(len(users)):
      for j in range(len(trs)):
        if not np.isnan(m[i, j]):
          ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                  color="white" if m[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label="PSR")
    ax.set_xlabel("tracker extractor")
    ax.set_title(f"PSR matrix ({kind})")
    plots.save(fig, f"psr_matrix_{kind}.png")


def _transfer(plots: _Plots, records: Sequence[dict]) -> None:
  """Leave-one-out transfer: PSR per held-out model and pipeline, by role."""
  rows = aggregate(records, "transfer", keys=("held_out", "pipeline", "role", "kind"))
  if not rows or plots.unchanged("transfer", rows):
    return
  kinds = list(OrderedDict.fromkeys(r["kind"] for r in rows))
  folds = list(OrderedDict.fromkeys((r["held_out"], r["pipeline"]) for r in rows))
  by = {(r["held_out"], r["pipeline"], r["role"], r["kind"]): r for r in rows}
  fig, axes = plots.subplots(len(kinds), 1, figsize=(max(6, 0.9 * len(folds)), 3 * len(kinds)),
                             squeeze=False)
  x = np.arange(len(folds))
  for ax, kind in zip(axes[:, 0], kinds):
    for off, role in ((-0.27, "transfer"), (0.0, "white-box"), (0.27, "clean")):
      rs = [by.get((m, p, role, kind)) for m, p in folds]
      ax.bar(x + off, [r["psr_mean"] if r else 0 for r in rs], 0.27,
             yerr=[r["psr_std"] if r else 0 for r in rs], capsize=2,
             label="no cloak" if role == "clean" else role)
    ax.set_xticks(x, [f"{m}@{p}" for m, p in folds], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("PSR")
    ax.set_title(f"Leave-one-out transfer: held-out model's tracker ({kind})")
    ax.legend(fontsize=7)
  plots.save(fig, "psr_transfer.png")


def _frontier(plots: _Plots, records: Sequence[dict]) -> None:
  """Held-out PSR and gap closed against visibility, one curve per family."""
  rows = frontier_points(records)
  if not rows or plots.unchanged("frontier", rows):
    return
  kinds = list(OrderedDict.fromkeys(k.split(" ", 1)[1] for r in rows for k in r
                                    if k.startswith("held-out ")))
  fig, axes = plots.subplots(1, len(kinds) + 1, figsize=(5.5 * (len(kinds) + 1), 5), squeeze=False)
  for fam in OrderedDict.fromkeys(r["family"] for r in rows):
    if fam == "no cloak":
      for ax, kind in zip(axes[0], kinds):
        base = next(r for r in rows if r["family"] == fam).get(f"held-out {kind}")
        if base:
          ax.axhline(base["mean"], color="gray", ls="--", lw=1, label="no cloak")
      continue
    rs = [r for r in rows if r["family"] == fam and r["quality"].get("ssimulacra2_median")]
    rs.sort(key=lambda r: -r["quality"]["ssimulacra2_median"])
    xs = [r["quality"]["ssimulacra2_median"] for r in rs]
    for ax, kind in zip(axes[0], kinds):
      cs = [r.get(f"held-out {kind}") for r in rs]
      ys = [c["mean"] for c in cs]
      err = [[c["mean"] - c["lo"] for c in cs], [c["hi"] - c["mean"] for c in cs]]
      ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=fam)
    gaps = [np.mean(list(r["gap_closed"].values())) if r["gap_closed"] else np.nan for r in rs]
    axes[0, -1].plot(xs, gaps, marker="o", label=fam)
  for ax, kind in zip(axes[0], kinds):
    ax.set_ylabel(f"held-out PSR ({kind}), 95% interval over users")
    ax.set_ylim(-0.05, 1.05)
  axes[0, -1].set_ylabel("gap closed, mean over held-out trackers")
  axes[0, -1].axhline(1.0, color="gray", ls=":", lw=1)
  for ax in axes[0]:
    ax.set_xlabel("median face SSIMULACRA2, written files (higher: less visible)")
    ax.invert_xaxis()
  # One legend under the plots: a family's label can be a long list of settings.
  handles, labels = axes[0, 0].get_legend_handles_labels()
  ncol = min(3, len(labels))
  fig.legend(handles, [textwrap.fill(t, 60) for t in labels], loc="lower center",
             ncol=ncol, fontsize=7, frameon=False)
  legend_rows = -(-len(labels) // ncol)
  fig.suptitle("Frontier: protection against visibility, one curve per family")
  plots.save(fig, "frontier.png", rect=(0, 0.06 + 0.07 * legend_rows, 1, 1))


def _leakage(plots: _Plots, records: Sequence[dict]) -> None:
  """PSR against the share of leaked clean photos."""
  rows = aggregate(records, "leakage")
  if not rows or plots.unchanged("leakage", rows):
    return
  _psr_lines(plots, rows, lambda r: r["leak"], "share of U's tracker photos leaked uncloaked",
             "PSR vs leakage", "psr_vs_leakage.png")


def _transforms(plots: _Plots, records: Sequence[dict]) -> None:
  """PSR and other-ID accuracy per transform of the tracker's photos."""
  rows = aggregate(records, "transforms")
  if not rows or plots.unchanged("transforms", rows):
    return
  groups = list(OrderedDict.fromkeys((r["tracker"], r["kind"]) for r in rows))
  labels = list(OrderedDict.fromkeys(r["transform"] for r in rows))
  fig, axes = plots.subplots(len(groups), 1, figsize=(max(6, 0.9 * len(labels)), 3 * len(groups)),
                             squeeze=False)
  for ax, (tr, kind) in zip(axes[:, 0], groups):
    rs = {r["transform"]: r for r in rows if r["tracker"] == tr and r["kind"] == kind}
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [rs[l]["psr_mean"] if l in rs else 0 for l in labels], 0.4, label="PSR")
    ax.bar(x + 0.2, [rs[l]["acc_mean"] if l in rs else 0 for l in labels], 0.4,
           label="other-ID accuracy")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{tr} {kind}")
    ax.legend(fontsize=7)
  plots.save(fig, "psr_vs_transforms.png")


def _detection(plots: _Plots, records: Sequence[dict]) -> None:
  """Cloak-detection separations, with and without originals."""
  rows = [r for r in records if r.get("experiment") == "detection"]
  if not rows or plots.unchanged("detection", rows):
    return
  settings = list(OrderedDict.fromkeys(r["setting"] for r in rows))
  fig, ax = plots.subplots(figsize=(7, 4))
  x = np.arange(len(settings))
  for off, key, label in ((-0.2, "without_originals", "w/o originals"),
                          (0.2, "with_originals", "with originals (2-means)")):
    vals = [summarize([r[key]["sigma"] for r in rows if r["setting"] == s and key in r])
            for s in settings]
    ax.bar(x + off, [v["mean"] if v["n"] else 0 for v in vals], 0.4,
           yerr=[v["std"] if v["n"] else 0 for v in vals], capsize=3, label=label)
  ax.axhline(3, color="red", ls="--", lw=1, label="3 sigma")
  ax.axhline(1, color="gray", ls=":", lw=1, label="1 sigma")
  ax.set_xticks(x, settings, rotation=15, ha="right", fontsize=8)
  ax.set_ylabel("separation (std devs of normal classes)")
  ax.legend(fontsize=7)
  ax.set_title("Cloak detection")
  plots.save(fig, "detection_separations.png")
