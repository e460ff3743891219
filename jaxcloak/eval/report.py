"""The evaluation report: report.md (tables), results.jsonl (records), PNG plots.

Every rate in a table comes with the counts behind it: PSR as mean +- std
over users and the pooled count (photos not recognised / test photos). The rows
come from `report_rows`; `plots` draws the pictures.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxcloak.eval.metrics import summarize
from jaxcloak.eval.plots import write_plots
from jaxcloak.eval.report_rows import aggregate, frontier_points


def _f(x, nd: int = 2) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "n/a"
  return f"{x:.{nd}f}"


def _rate_cells(row) -> list[str]:
  return [f"{_f(row['psr_mean'])} +- {_f(row['psr_std'])}", f"{row['psr_k']}/{row['psr_n']}",
          f"{_f(row['acc_mean'])}", f"{row['acc_k']}/{row['acc_n']}", str(row["users"])]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
  return "\n".join(lines)


RATE_HEADER = ["PSR mean +- std", "not recognised / U test photos", "other-ID acc",
               "correct / other test photos", "users"]


def _psr_section(records, experiment: str, title: str, note: str) -> str:
  rows = aggregate(records, experiment)
  if not rows:
    return ""
  body = _table(["cloak config", "setting", "tracker", "kind"] + RATE_HEADER,
                [[r["config"], r["setting"], r["tracker"], r["kind"]] + _rate_cells(r)
                 for r in rows])
  return f"## {title}\n\n{note}\n\n{body}\n"


def _matrix_section(records) -> str:
  rows = aggregate(records, "matrix")
  if not rows:
    return ""
  trackers = list(OrderedDict.fromkeys(r["tracker"] for r in rows))
  kinds = list(OrderedDict.fromkeys(r["kind"] for r in rows))
  settings = list(OrderedDict.fromkeys((r["setting"], r["config"]) for r in rows))
  by = {(r["setting"], r["tracker"], r["kind"]): r for r in rows}
  out = ["## PSR matrix: user model x tracker extractor",
         "",
         "Cell: PSR mean +- std over users [not recognised / U test photos]; "
         "other-identity accuracy below each table.", ""]
  for kind in kinds:
    table = []
    for setting, config in settings:
      cells = []
      for t in trackers:
        r = by.get((setting, t, kind))
        cells.append(f"{_f(r['psr_mean'])} +- {_f(r['psr_std'])} [{r['psr_k']}/{r['psr_n']}]"
                     if r else "")
      table.append([setting, config] + cells)
    out += [f"Tracker kind: **{kind}**", "", _table(["user side", "cloak config"] + trackers, table),
            ""]
    acc = []
    for setting, config in settings:
      cells = []
      for t in trackers:
        r = by.get((setting, t, kind))
        cells.append(f"{_f(r['acc_mean'])} [{r['acc_k']}/{r['acc_n']}]" if r else "")
      acc.append([setting] + cells)
    out += [f"Other-identity accuracy ({kind}):", "", _table(["user side"] + trackers, acc), ""]
  return "\n".join(out) + "\n"


TRANSFER_ROLES = (("transfer", "transfer"), ("white-box", "white-box"), ("clean", "no cloak"))


def _cell(r) -> str:
  return f"{_f(r['psr_mean'])} +- {_f(r['psr_std'])} [{r['psr_k']}/{r['psr_n']}]" if r else ""


def _mean_of(values) -> str:
  v = [x for x in values if x is not None]
  return _f(float(np.mean(v)), 2) if v else "n/a"


def _transfer_section(records, info=None) -> str:
  rows = aggregate(records, "transfer", keys=("held_out", "pipeline", "role", "kind"))
  if not rows:
    return ""
  recs = [r for r in records if r.get("experiment") == "transfer"]
  kinds = list(OrderedDict.fromkeys(r["kind"] for r in rows))
  folds = list(OrderedDict.fromkeys((r["held_out"], r["pipeline"]) for r in rows))
  by = {(r["held_out"], r["pipeline"], r["role"], r["kind"]): r for r in rows}
  # Per-user verdicts repeat across tracker kinds: read them from one kind.
  once = [r for r in recs if r["kind"] == kinds[0] and r["role"] != "clean"]
  header = ["held-out model", "tracker pipeline", "transfer cloak"]
  header += [f"{label} {k}" for role, label in TRANSFER_ROLES for k in kinds]
  header += ["held-out feature shift (transfer / white-box)",
             "held-out fooled (transfer / white-box)", "other-ID acc (lowest cell)"]
  table = []
  for m, pipe in folds:
    cells = [by.get((m, pipe, role, k)) for role, _ in TRANSFER_ROLES for k in kinds]
    members = next((r["cloak_models"] for r in once if r["held_out"] == m
                    and r["role"] == "transfer"), "")
    mine = {role: [r for r in once if (r["held_out"], r["pipeline"], r["role"]) == (m, pipe, role)]
            for role in ("transfer", "white-box")}
    low = min((c for c in cells if c), key=lambda c: c["acc_mean"])
    table.append([m, pipe, members] + [_cell(c) for c in cells] + [
        " / ".join(_mean_of(r.get("heldout_shift") for r in mine[k]) for k in mine),
        " / ".join(_mean_of(r.get("heldout_fooled") for r in mine[k]) for k in mine),
        f"{_f(low['acc_mean'])} [{low['acc_k']}/{low['acc_n']}]"])
  white = next((r["cloak_models"] for r in once if r["role"] == "white-box"), "")
  out = ["## Transfer: leave one model out",
         "",
         "For each held-out model M, the user's photos are cloaked with the ensemble of all the "
         f"other models (transfer) and with all of them, M included (white-box: {white}), and "
         "tracked by trackers on M, through each tracker pipeline (yunet: the cloak's own "
         "landmarks and alignment; retinaface: RetinaFace landmarks, similarity-aligned; margin: "
         "RetinaFace box plus margin, no alignment). Cell: PSR mean +- std over users [not "
         "recognised / U test photos]. Held-out feature shift: mean L2 move of M's unit features, "
         "written cloaked photo vs its original, through that pipeline; fooled: share of the "
         "cloaked photos M no longer matches to their originals (distance above M's same-person "
         "threshold).", "",
         _table(header, table), ""]
  stats = (info or {}).get("tracker_pipelines")
  if stats:
    out += ["Photos where RetinaFace found no face (the pipeline fell back to the YuNet face): "
            + ", ".join(f"{k} {v['fallback']}/{v['photos']}" for k, v in stats.items()) + ".", ""]
  # Every model's verdict on each cloak's written files (yunet pipeline).
  first = folds[0][1]
  verdict = [r for r in once if r["pipeline"] == first and r.get("member_shift")]
  if verdict:
    models = list(verdict[0]["member_shift"])
    groups: "OrderedDict[str, list]" = OrderedDict()
    for r in verdict:
      groups.setdefault(r["cloak_models"], []).append(r)
    lines = []
    for config, rs in groups.items():
      seen = {r["user"]: r for r in rs}.values()  # the white-box cloak recurs in every fold
      lines.append([config] + [
          f"{_mean_of(r['member_shift'].get(n) for r in seen)} / "
          f"{_mean_of(r['member_fooled'].get(n) for r in seen)}"
          + (" (held out)" if n not in config.split("+") else "") for n in models])
    out += ["Every model's verdict on the written cloaked photos (mean over users of feature "
            "shift / share fooled; models outside the cloak's ensemble are held out):", "",
            _table(["cloak ensemble"] + models, lines), ""]
  loop = [r for r in once if r.get("loop_member_distances")]
  if loop:
    groups = OrderedDict()
    for r in loop:
      groups.setdefault(r["cloak_models"], []).append(r)
    out += ["The loop's own per-member distances (float patch): " + "; ".join(
        f"{c}: " + ", ".join(f"{n} {_mean_of(r['loop_member_distances'].get(n) for r in rs)}"
                             for n in rs[0]["loop_member_distances"])
        for c, rs in groups.items()) + ".", ""]
  return "\n".join(out) + "\n"


def _knobs_section(records) -> str:
  rows = aggregate(records, "knobs", keys=("knob", "tracker", "kind"))
  if not rows:
    return ""
  recs = [r for r in records if r.get("experiment") == "knobs" and r["knob"] != "no cloak"]
  quality = {r["knob"]: r for r in records
             if r.get("experiment") == "quality" and r.get("for") == "knobs"}
  kinds = list(OrderedDict.fromkeys(r["kind"] for r in rows))
  trackers = list(OrderedDict.fromkeys(r["tracker"] for r in rows))
  knobs = list(OrderedDict.fromkeys(r["knob"] for r in rows))
  by = {(r["knob"], r["tracker"], r["kind"]): r for r in rows}
  member = {(r["knob"], r["tracker"]) for r in recs if not r["held_out"]}
  table = []
  for k in knobs:
    q = quality.get(k, {})
    cells = []
    for t in trackers:
      for kind in kinds:
        c = by.get((k, t, kind))
        cells.append((f"{_f(c['psr_mean'])} [{c['psr_k']}/{c['psr_n']}]" if c else "")
                     + (" (member)" if (k, t) in member else ""))
    table.append([k, q.get("config", "")] + cells + [
        _f(q.get("ssimulacra2_min"), 1), _f(q.get("worst_block_max"), 3),
        _f(q.get("dssim_mean"), 4), _f(q.get("seconds_per_photo"), 1)])
  header = ["knob", "config"] + [f"{t} {kind}" for t in trackers for kind in kinds]
  header += ["worst SSIMULACRA2", "worst block DSSIM", "DSSIM mean", "s/photo"]
  return ("## Knobs: each technique on and off\n\nThe base cloak (first user model) and one "
          "variant per knob, on the same users, splits and target pool. Cell: PSR mean over "
          "users [not recognised / U test photos]; a tracker whose extractor is in the variant's "
          "ensemble is marked (member), every other one is held out. Worst SSIMULACRA2 (higher "
          "is better) and worst block DSSIM: the worst face of the variant, on the written "
          "files. s/photo: wall time per photo, compile included, shared CPU.\n\n"
          + _table(header, table) + "\n")


def _frontier_section(records) -> str:
  rows = frontier_points(records)
  if not rows:
    return ""
  roles = list(OrderedDict.fromkeys(k for r in rows for k in r
                                    if k.startswith(("held-out ", "white-box "))))
  held = list(OrderedDict.fromkeys(t for r in rows for t in r["gap_closed"]))
  cell = lambda c: f"{_f(c['mean'])} [{_f(c['lo'])}, {_f(c['hi'])}]" if c else ""
  table = []
  for r in rows:
    q = r["quality"]
    table.append([r["family"], r["point"] or "-"] + [cell(r.get(k)) for k in roles]
                 + [_f(r["gap_closed"].get(t)) for t in held]
                 + [_f(q.get("ssimulacra2_median"), 1), _f(q.get("ssimulacra2_min"), 1),
                    _f(q.get("dssim_mean"), 4), _f(q.get("worst_block_max"), 3),
                    _f(q.get("seconds_per_photo"), 2)])
  header = ["family", "point"] + [f"PSR {k}" for k in roles] + [f"gap closed {t}" for t in held]
  header += ["median SSIMULACRA2", "worst SSIMULACRA2", "DSSIM mean", "worst block DSSIM",
             "s/photo"]
  return ("## Frontier: protection against visibility\n\nEach family at each strength point, "
          "cloaked without the held-out models. PSR: mean over users (a user's value is the "
          "mean over the role's trackers) [95% bootstrap interval over users]; held-out = "
          "trackers on models the cloak never used, white-box = its own members. Gap closed: "
          "per held-out tracker, the median over users of the share of the way from the person's centroid to the "
          "nearest other identity's that the cloak moved a photo (metrics.gap_closed; PSR rises "
          "only as it nears 1). Visibility on the written files; s/photo: wall time, compile "
          "included, shared CPU.\n\n" + _table(header, table) + "\n")


def _quality_section(records) -> str:
  rows = [r for r in records if r.get("experiment") == "quality"]
  if not rows:
    return ""
  seen, table = set(), []
  for r in rows:
    if r["config"] in seen:
      continue
    seen.add(r["config"])
    table.append([r["config"], _f(r["budget"], 4), r["steps"], f"{r['cloaked']}/{r['photos']}",
                  _f(r["dssim_mean"], 4), _f(r["dssim_max"], 4), _f(r["psnr_mean"], 1),
                  _f(r.get("feature_shift_mean"), 3), _f(r.get("ssimulacra2_min"), 1),
                  _f(r.get("worst_block_max"), 3), _f(r["seconds_per_photo"], 2),
                  ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
                  f"{r['redetected']}/{r['photos']}"])
  return ("## Cloak quality (on the written files)\n\nDSSIM over each main face's region, "
          "measured on the re-decoded written file; PSNR over the same region; seconds per "
          "photo include compile time of the first batch of each config (shared CPU, noisy). Feature "
          "shift: mean L2 move of the user model's unit features (float patch, before writing). "
          "Worst SSIMULACRA2 (100 = identical, higher is better) and worst block DSSIM (an "
          "eye-sized block): the config's worst face on the written files.\n\n"
          + _table(["config", "budget", "steps", "cloaked / photos", "DSSIM mean", "DSSIM max",
                    "PSNR dB", "feature shift", "worst SSIMULACRA2", "worst block DSSIM",
                    "s/photo", "statuses", "face re-detected"], table) + "\n")


def _detection_section(records) -> str:
  rows = [r for r in records if r.get("experiment") == "detection"]
  if not rows:
    return ""
  groups: "OrderedDict[tuple, list]" = OrderedDict()
  for r in rows:
    groups.setdefault((r["setting"], r["config"], r["tracker"]), []).append(r)
  table = []
  for (setting, config, tracker), rs in groups.items():
    wo = [r["without_originals"]["sigma"] for r in rs if "without_originals" in r]
    wi = [r["with_originals"]["sigma"] for r in rs]
    pur = [r["with_originals"].get("purity", float("nan")) for r in rs]
    s1, s2 = summarize(wo), summarize(wi)
    table.append([setting, config, tracker, f"{_f(s1['mean'])} +- {_f(s1['std'])}",
                  f"{sum(1 for v in wo if v > 3)}/{len(wo)}",
                  f"{_f(s2['mean'])} +- {_f(s2['std'])}", f"{sum(1 for v in wi if v > 3)}/{len(wi)}",
                  _f(summarize(pur)["mean"]), len(rs),
                  f"{sum(r['cloaked_photos'] for r in rs)} cloaked, "
                  f"{sum(r['clean_photos'] for r in rs)} clean"])
  return ("## Cloak detection (paper §8.2)\n\n"
          "Without originals: how much closer the cloaked class centroid is to the target "
          "class centroid than normal class pairs are, in std devs of normal pairs' centroid "
          "distances. With originals: 2-means on the user's class (cloaked train + clean test "
          "photos); centroid separation minus normal classes' mean 2-means separation, in std "
          "devs of those. Paper: ~3 sigma detectable, within 1 sigma with mitigations "
          "(stop at 20% of the L2 distance; average-distance target). Purity: how well the 2 "
          "clusters recover which photos were cloaked (0.5 = chance).\n\n"
          + _table(["mitigation", "config", "tracker space", "sigma w/o originals",
                    ">3 sigma", "sigma with originals", ">3 sigma", "purity", "users", "photos"],
                   table) + "\n")


def write(out_dir: Path, records: Sequence[dict], info: dict, settings: dict, *,
          command: str = "", drawn: dict | None = None) -> None:
  """Writes report.md, results.jsonl and the PNG plots into out_dir.

  A run that rewrites its report after every experiment passes one `drawn` dict to
  every call: a plot whose rows did not change since is not drawn again.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "results.jsonl", "w") as f:
    f.write(json.dumps({"experiment": "info", **info, "settings": settings}, default=str) + "\n")
    for r in records:
      f.write(json.dumps(r, default=str) + "\n")
  plots = write_plots(out_dir, records, drawn)
  parts = ["# jaxcloak protection evaluation", ""]
  if command:
    parts += [f"Command: `{command}`", ""]
  parts += [
      f"Run time: {info.get('seconds', 'n/a')} s "
      f"(per experiment: {info.get('experiment_seconds', {})}).", "",
      f"Data: {info.get('data')} — {info.get('data_identities')} identities, "
      f"{info.get('data_photos')} photos with a face (dropped: {info.get('data_dropped')}). "
      f"Pool: {info.get('pool')} — {info.get('pool_identities')} identities, "
      f"{info.get('pool_photos')} photos (dropped: {info.get('pool_dropped')}); "
      f"{info.get('background_identities')} of them are background classes of the tracker "
      f"({info.get('tracker_classes')} classes in all).", "",
      f"Protected users ({len(info.get('users', []))}, each in turn): "
      f"{', '.join(info.get('users', []))}; {info.get('train_photos_per_user')} cloaked train "
      f"photos each; clean test photos: {info.get('test_photos_per_user')}.", "",
      "PSR = share of the user's clean test photos the tracker does not classify as the user. "
      "The tracker trains on the user's cloaked photos as written to disk (re-decoded and "
      "re-detected), the other identities' clean train photos and the background classes.", "",
      "Settings: `" + json.dumps(settings, default=str) + "`", ""]
  parts.append(_matrix_section(records))
  parts.append(_transfer_section(records, info))
  parts.append(_frontier_section(records))
  parts.append(_knobs_section(records))
  parts.append(_psr_section(records, "budget", "PSR vs DSSIM budget (paper Fig. 16)",
                            "Base user model; one cloak per budget."))
  parts.append(_psr_section(records, "leakage", "PSR with leaked clean photos",
                            "Share of the user's tracker training photos that are the clean "
                            "originals instead of the cloaked ones."))
  parts.append(_psr_section(records, "transforms", "PSR and accuracy after transforms",
                            "Blur/noise/JPEG are applied to all of the tracker's training and "
                            "test photos; augmentation (random rotation, shift, zoom) adds "
                            "transformed copies of the training photos only. Other-ID accuracy "
                            "is the tracker's normal accuracy under the same transform."))
  parts.append(_psr_section(records, "robust", "Robust tracker",
                            "kind `robust`: probe adversarially trained with L2 PGD on its "
                            "input features (embedding space, not crop pixels). kind "
                            "`robust-crop` (if run): probe retrained on clean plus L-inf PGD "
                            "crops, attacked through the frozen extractor."))
  parts.append(_psr_section(records, "adaptive", "Adaptive tracker (Radiya-Dixit et al. 2022)",
                            "The tracker cloaks photos of identities it can label (other users' "
                            "cloaked train photos plus a few cloaked photos of each other "
                            "identity, same cloak config) and trains on them with true labels."))
  parts.append(_psr_section(records, "finetune", "Fine-tuned tracker",
                            "Extractor's last layers plus a softmax head trained with optax on "
                            "the aligned crops."))
  parts.append(_detection_section(records))
  parts.append(_quality_section(records))
  if plots:
    parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
  (out_dir / "report.md").write_text("\n".join(p for p in parts if p is not None))
