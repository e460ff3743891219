"""Side-by-side pictures (original | cloaked | difference x10) of a cloak run, for people to judge.

Reads the run's report.jsonl, takes up to `--photos` cloaked photos (one per
user first), labels every face with its DSSIM, worst block and SSIMULACRA2 on
the written file, and writes one PNG:

    jaxcloak cloak SRC --pool POOL --preset mid -o OUT
    python benchmarks/side_by_side.py SRC OUT docs/visibility/mid.png --zoom 2

Prints one JSON line with the figures of the faces shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from jaxcloak.faces import io as photo_io
from jaxcloak.faces import sheet


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("src", type=Path, help="the folder that was cloaked")
  ap.add_argument("out", type=Path, help="the cloak output folder (with report.jsonl)")
  ap.add_argument("png", type=Path)
  ap.add_argument("--photos", type=int, default=3)
  ap.add_argument("--zoom", type=int, default=1)
  ap.add_argument("--title", default="")
  args = ap.parse_args()
  records = [json.loads(l) for l in (args.out / "report.jsonl").read_text().splitlines()]
  cloaked = [r for r in records if r["status"] == "cloaked"]
  by_user: dict[str, list] = {}
  for r in cloaked:
    by_user.setdefault(r["user"], []).append(r)
  chosen = [v[0] for v in by_user.values()][:args.photos]
  rows, shown = [], []
  for r in chosen:
    original = photo_io.decode((args.src / r["input"]).read_bytes()).rgb
    written = photo_io.decode((args.out / r["output"]).read_bytes()).rgb
    faces = [f for f in r["faces"] if f["status"] == "cloaked"]
    labels = []
    for f in faces:
      s2 = f.get("ssimulacra2")
      labels.append(f"D {f['dssim']:.4f} blk {f.get('worst_block', float('nan')):.3f} "
                    f"S2 {s2:.0f}" if s2 is not None else f"D {f['dssim']:.4f}")
      shown.append(f)
    rows.append(sheet.row(original, written, [f["region"] for f in faces], labels,
                          title=r["input"], zoom=args.zoom))
  args.png.parent.mkdir(parents=True, exist_ok=True)
  sheet.stack(rows, args.title).save(args.png)
  figures = lambda k: [f[k] for f in shown if f.get(k) is not None]
  print(json.dumps({"bench": "side_by_side", "png": str(args.png), "faces": len(shown),
                    "max_dssim": max(figures("dssim"), default=None),
                    "max_worst_block": max(figures("worst_block"), default=None),
                    "min_ssimulacra2": min(figures("ssimulacra2"), default=None)}))


if __name__ == "__main__":
  main()
