"""Do recognizers still match cloaked faces? (`jaxcloak check ORIGINALS CLOAKED`)

For every photo pair (same relative path, or same name with another suffix),
each side is detected on its own, as a tracker would, faces are paired by
overlap, and every ported recognizer embeds both faces: a face is still
*matched* by a model when the distance of its unit features stays under that
model's same-person threshold (from the verification benchmark), and the model
is *fooled* otherwise. Models the cloak was optimised on are reported apart
from the others: only the others say what an unknown tracker would see.

Writes check.jsonl (one line per face), check.md (the summary table) and
contact sheets (original | cloaked | difference, faces labelled, the summary
and a per-model bar chart on top of the first page).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxcloak import models
from jaxcloak.config import CloakConfig, EngineSettings
from jaxcloak.faces import regions as regions_lib
from jaxcloak.faces import sheet
from jaxcloak.files import atomic_write
from jaxcloak.paths import refuse_overlap
from jaxcloak.pipeline.cloaker import Cloaker, Item
from jaxcloak.pipeline.local import collect_photos

MIN_IOU = 0.5  # a cloaked-side face is the same face when its box overlaps this much
SHEET_ROWS = 24  # photos per contact-sheet page


class CheckError(ValueError):
  """A mistake a person can fix (paths, names): one `error:` line."""


@dataclasses.dataclass
class Pair:
  rel: str  # relative path in ORIGINALS
  original: Path | None
  cloaked: Path | None


def _photos(folder: Path, exclude: Sequence[Path]) -> dict[str, Path]:
  """rel -> path of the folder's photos, without hidden folders (.jaxcloak) or `exclude`."""
  skip = [Path(e).resolve() for e in exclude]
  return {rel: p for p, rel, _ in collect_photos([folder])
          if not any(part.startswith(".") for part in Path(rel).parts)
          and not any(p.resolve().is_relative_to(e) for e in skip)}


def pair_photos(originals: Path, cloaked: Path, *, exclude: Sequence[Path] = ()) -> list[Pair]:
  """Photos of both folders, paired by relative path (or by path without suffix,
  since a cloak may be written in another format)."""
  for folder, what in ((originals, "ORIGINALS"), (cloaked, "CLOAKED")):
    if not Path(folder).is_dir():
      raise CheckError(f"{what} {folder} is not a folder")
  left, right = _photos(originals, exclude), _photos(cloaked, exclude)
  by_stem = {str(Path(r).with_suffix("")): r for r in right}
  pairs, used = [], set()
  for rel, p in sorted(left.items()):
    match = rel if rel in right else by_stem.get(str(Path(rel).with_suffix("")))
    if match is not None and match not in used:
      used.add(match)
      pairs.append(Pair(rel, p, right[match]))
    else:
      pairs.append(Pair(rel, p, None))
  pairs += [Pair(r, None, right[r]) for r in sorted(set(right) - used)]
  if not any(p.original and p.cloaked for p in pairs):
    raise CheckError(f"no photo of CLOAKED {cloaked} has a counterpart in ORIGINALS {originals} "
                     "(same relative path); give the folder that was cloaked and its output")
  return pairs


def pair_outputs(photos: Sequence[tuple[Path, str, str]], out_dir: Path) -> list[Pair]:
  """`cloak`'s inputs (collect_photos) and where it wrote each of them in out_dir."""
  pairs = []
  for src, rel, _ in photos:
    out = Path(out_dir) / rel
    if not out.exists():  # written in another format
      out = next(iter(sorted(out.parent.glob(out.stem + ".*"))), None)
    pairs.append(Pair(rel, src, out))
  return pairs


def optimised_on(cloaked: Path) -> tuple[str, ...]:
  """The models a jaxcloak cloak was optimised on, from CLOAKED/report.jsonl (or ())."""
  report = Path(cloaked) / "report.jsonl"
  if not report.is_file():
    return ()
  names: dict[str, None] = {}
  for line in report.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    for face in rec.get("faces", []):
      names.update(dict.fromkeys(face.get("features", {})))
  return tuple(names)


def _iou(a, b) -> float:
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
  iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
  inter = ix * iy
  return inter / max(aw * ah + bw * bh - inter, 1e-9)


def check(originals: Path, cloaked: Path, out_dir: Path | None = None, **kw) -> dict:
  """Checks every photo pair of two folders (check_pairs); out_dir defaults to CLOAKED/check."""
  out_dir = Path(out_dir) if out_dir is not None else Path(cloaked) / "check"
  refuse_overlap(out_dir, [Path(originals)], what="check output folder")
  kw.setdefault("cloaked_with", optimised_on(Path(cloaked)))
  # An earlier check's report folder in CLOAKED (`cloak --check`) holds sheets, not photos.
  earlier = Path(cloaked) / "check"
  skip = (out_dir, earlier) if (earlier / "check.jsonl").is_file() else (out_dir,)
  return check_pairs(pair_photos(Path(originals), Path(cloaked), exclude=skip), out_dir, **kw)


def check_pairs(pairs: Sequence[Pair], out_dir: Path, *,
                extractors: Sequence[str] = tuple(models.EXTRACTORS),
                cloaked_with: Sequence[str] = (), weights_dir=None, chunk: int = 16) -> dict:
  """Judges every pair with every model; writes check.jsonl, check.md, contact sheets."""
  unknown = [e for e in extractors if e not in models.EXTRACTORS]
  if unknown:
    raise CheckError(f"unknown extractors: {', '.join(unknown)} "
                     f"(known: {', '.join(models.EXTRACTORS)})")
  members = tuple(cloaked_with)
  judge = Cloaker(CloakConfig(extractors=tuple(extractors)),
                  EngineSettings(weights_dir=weights_dir))
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records, rows = [], []
  for p in pairs:
    if p.original is None or p.cloaked is None:
      side = "CLOAKED" if p.cloaked is None else "ORIGINALS"
      records.append({"photo": p.rel,
                      "status": "missing_cloaked" if p.cloaked is None else "missing_original",
                      "message": f"{p.rel}: no counterpart in {side}"})
  both = [p for p in pairs if p.original is not None and p.cloaked is not None]
  for start in range(0, len(both), chunk):
    part = both[start:start + chunk]
    left = [Item(p.rel, p.original.read_bytes()) for p in part]
    right = [Item(p.rel, p.cloaked.read_bytes()) for p in part]
    for it in left + right:
      judge.decode(it)
    judge.detect([it for it in left + right if it.photo is not None])
    recs = [_match_faces(judge, p, a, b) for p, a, b in zip(part, left, right)]
    _judge([r for photo in recs for r in photo], judge, members)
    for p, a, b, photo in zip(part, left, right, recs):
      for r in photo:
        r.pop("_regions", None)
      records += photo
      if any(r["status"] == "checked" for r in photo):
        rows.append((p, a.photo.rgb, b.photo.rgb, photo))
  summary = summarize(records, tuple(extractors), members)
  with open(out_dir / "check.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  atomic_write(out_dir / "check.md", (table(summary) + "\n").encode())
  summary["sheets"] = [str(s) for s in write_sheets(out_dir, rows, summary)]
  summary["out"] = str(out_dir)
  return summary


def _match_faces(judge: Cloaker, p: Pair, a: Item, b: Item) -> list[dict]:
  """One photo's faces: each original face paired with the cloaked face it overlaps."""
  if a.photo is None or b.photo is None:
    bad = a if a.photo is None else b
    return [{"photo": p.rel, "status": "unreadable", "message": bad.message}]
  if a.photo.rgb.shape != b.photo.rgb.shape:
    return [{"photo": p.rel, "status": "size_mismatch",
             "message": f"{p.rel}: original {a.photo.rgb.shape[1]}x{a.photo.rgb.shape[0]}, cloaked "
                        f"{b.photo.rgb.shape[1]}x{b.photo.rgb.shape[0]}: not the same photo"}]
  if not a.faces and not b.faces:
    return [{"photo": p.rel, "status": "no_face"}]
  out, taken = [], set()
  for fa in a.faces:
    best = max(((k, _iou(fa.box, fb.box)) for k, fb in enumerate(b.faces) if k not in taken),
               key=lambda t: t[1], default=(None, 0.0))
    if best[0] is None or best[1] < MIN_IOU:
      # The tracker's detector no longer finds this face: it cannot recognise it either.
      out.append({"photo": p.rel, "status": "face_only_in_original", "box": _box(fa.box)})
      continue
    taken.add(best[0])
    fb = b.faces[best[0]]
    # Each side cut from its own detection, as a tracker would.
    ra = regions_lib.face_region(a.photo.rgb, fa.landmarks, judge.extractors,
                                 max_region=judge.config.max_region)
    rb = regions_lib.face_region(b.photo.rgb, fb.landmarks, judge.extractors,
                                 max_region=judge.config.max_region)
    out.append({"photo": p.rel, "status": "checked", "box": _box(fa.box), "region": list(ra.box),
                "dssim": round(regions_lib.region_dssim(a.photo.rgb, b.photo.rgb, ra.box), 6),
                "_regions": (ra, rb)})
  for k, fb in enumerate(b.faces):
    if k not in taken:
      out.append({"photo": p.rel, "status": "face_only_in_cloaked", "box": _box(fb.box)})
  return out


def _judge(records: Sequence[dict], judge: Cloaker, members) -> None:
  """Every model's verdict on every checked face, in batches."""
  todo = [r for r in records if r["status"] == "checked"]
  if not todo:
    return
  fa = judge.region_features([r["_regions"][0] for r in todo])
  fb = judge.region_features([r["_regions"][1] for r in todo])
  for i, r in enumerate(todo):
    r["models"] = {}
    for e in judge.extractors:
      d = float(np.linalg.norm(fa[e.name][i] - fb[e.name][i]))
      r["models"][e.name] = {"distance": round(d, 5), "threshold": round(e.same_person_distance, 5),
                             "fooled": d > e.same_person_distance,
                             "optimised_on": e.name in members}


def _box(b) -> list[float]:
  return [round(float(v), 1) for v in b]


def summarize(records: Sequence[dict], extractors: Sequence[str], members: Sequence[str]) -> dict:
  checked = [r for r in records if r["status"] == "checked"]
  per_model = {}
  for e in extractors:
    fooled = sum(r["models"][e]["fooled"] for r in checked)
    per_model[e] = {"faces": len(checked), "fooled": fooled,
                    "fooled_share": fooled / len(checked) if checked else None,
                    "optimised_on": e in members}
  others = [m for m in extractors if m not in members]
  fooled_by_all_others = sum(all(r["models"][m]["fooled"] for m in others) for r in checked)
  statuses: dict[str, int] = {}
  for r in records:
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
  return {"photos": len({r["photo"] for r in records}), "statuses": statuses,
          "optimised_on": list(members), "models": per_model,
          "faces_fooling_every_other_model": fooled_by_all_others if others else None,
          "mean_dssim": float(np.mean([r["dssim"] for r in checked])) if checked else None}


def table(summary: dict) -> str:
  lines = ["| model | optimised on | faces fooled / checked | share fooled |", "|---|---|---|---|"]
  for name, m in summary["models"].items():
    share = "n/a" if m["fooled_share"] is None else f"{m['fooled_share']:.2f}"
    lines.append(f"| {name} | {'yes' if m['optimised_on'] else 'no'} | {m['fooled']}/{m['faces']} "
                 f"| {share} |")
  others = [n for n, m in summary["models"].items() if not m["optimised_on"]]
  if others:
    note = ("Models the cloak was not optimised on (the honest figure for an unknown tracker): "
            + ", ".join(others) + ".")
  else:
    note = ("Every model checked was one the cloak was optimised on: this says nothing about "
            "an unknown tracker; check with others (--extractors).")
  return ("# jaxcloak check\n\nA face is fooled by a model when the cloaked face's features are "
          "farther from the original's than the model's same-person threshold.\n\n"
          + "\n".join(lines) + f"\n\n{note}\n\nPhotos: {summary['photos']}; statuses: "
          f"{summary['statuses']}.")


def _label(r: dict) -> str:
  fooled = [m for m, v in r["models"].items() if v["fooled"]]
  return (f"D {r['dssim']:.4f}  fooled {len(fooled)}/{len(r['models'])}: "
          + (",".join(fooled) or "none"))


def _face_crop(rgb: np.ndarray, box, height: int) -> tuple[np.ndarray, tuple]:
  """The face region plus a margin, scaled to `height` (the sheet's row), and the
  region's box in the crop."""
  x0, y0, x1, y1 = box
  m = (x1 - x0) // 4
  cx0, cy0 = max(0, x0 - m), max(0, y0 - m)
  cx1, cy1 = min(rgb.shape[1], x1 + m), min(rgb.shape[0], y1 + m)
  crop = Image.fromarray(np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1]))
  k = height / crop.height
  crop = crop.resize((max(1, round(crop.width * k)), height), Image.LANCZOS)
  return np.asarray(crop), tuple(round(v * k) for v in (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))


def _header(summary: dict, width: int) -> Image.Image:
  """The run's summary: one bar per model, share of faces it no longer matches."""
  models_ = summary["models"]
  bar_w, row_h = max(200, width - 260), 16
  im = Image.new("RGB", (max(width, 460), 34 + row_h * len(models_)), "white")
  draw = ImageDraw.Draw(im)
  draw.text((4, 2), f"jaxcloak check: {summary['photos']} photos, statuses {summary['statuses']}",
            fill="black")
  draw.text((4, 16), "share of faces each model no longer matches (dark: optimised on; "
            "light: not, the honest figure)", fill="black")
  for i, (name, m) in enumerate(models_.items()):
    y = 34 + i * row_h
    share = m["fooled_share"] or 0.0
    draw.text((4, y), name[:14], fill="black")
    draw.rectangle((110, y + 2, 110 + bar_w, y + row_h - 3), outline=(180, 180, 180))
    colour = (40, 90, 160) if m["optimised_on"] else (120, 190, 240)
    if share > 0:
      draw.rectangle((110, y + 2, 110 + int(bar_w * share), y + row_h - 3), fill=colour)
    draw.text((116 + bar_w, y), f"{m['fooled']}/{m['faces']}", fill="black")
  return im


def write_sheets(out_dir: Path, rows, summary: dict, *, face_height: int = 192) -> list[Path]:
  """Contact sheets, one row per checked face (its region cut from both sides, so a
  folder of 1,000 photos stays readable), SHEET_ROWS rows a page; the first page
  carries the run's summary."""
  faces = [(p, a, b, r) for p, a, b, recs in rows for r in recs if r["status"] == "checked"]
  paths = []
  for page, start in enumerate(range(0, max(len(faces), 1), SHEET_ROWS), 1):
    pictures = []
    for p, a, b, r in faces[start:start + SHEET_ROWS]:
      ca, box = _face_crop(a, r["region"], face_height)
      cb, _ = _face_crop(b, r["region"], face_height)
      pictures.append(sheet.row(ca, cb, [box], [_label(r)], title=p.rel))
    width = max((pic.width for pic in pictures), default=460)
    parts = ([_header(summary, width)] if page == 1 else []) + pictures
    path = out_dir / f"sheet-{page:03d}.png"
    sheet.stack(parts).save(path)
    paths.append(path)
  return paths
