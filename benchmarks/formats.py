"""How much of a cloak survives each output format's encoder, on the written file.

  python benchmarks/formats.py [--photos 6] [--preset low]

The same LFW photos are saved as JPEG (quality 92), PNG, HEIC and AVIF, and
each set is cloaked with the same settings (untargeted, dlib). Per format, one
JSON line: the region DSSIM on the written file, the feature move the loop
reached on the float patch (`self_distance`, dlib), the move measured on the
re-decoded written file, their ratio (the share of the cloak the encoder left),
and the share of faces dlib no longer matches to the original. PNG is the
lossless peer: its ratio is the rounding to 8 bits alone.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = {"JPEG": (".jpg", {"quality": 92}), "PNG": (".png", {}),
           "HEIF": (".heic", {"quality": 90}), "AVIF": (".avif", {"quality": 90})}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--photos", type=int, default=6)
  ap.add_argument("--preset", default="low")
  ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
  args = ap.parse_args()
  if not args.faces.is_dir():
    raise SystemExit(f"error: {args.faces}: no such folder (the LFW faces of ../shared/data)")
  from jaxcloak.config import preset
  from jaxcloak.faces import io as photo_io  # noqa: F401 (registers the HEIF codec)
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import cloak_photos, collect_photos

  people = sorted(d for d in args.faces.iterdir() if d.is_dir())[:args.photos]
  sources = [sorted(d.glob("*.jpg"))[0] for d in people]
  cloaker = Cloaker(preset(args.preset, mode="untargeted", extractors=("dlib",), views=0))
  work = Path(tempfile.mkdtemp(prefix="jcformats"))
  for fmt, (suffix, kw) in FORMATS.items():
    src = work / fmt / "in" / "user"
    src.mkdir(parents=True)
    for p in sources:
      b = io.BytesIO()
      Image.open(p).convert("RGB").save(b, fmt, **kw)
      (src / (p.parent.name + suffix)).write_bytes(b.getvalue())  # LFW names repeat
    out = work / fmt / "out"
    summary = cloak_photos(cloaker, collect_photos([src.parent]), out, progress=False,
                           log=lambda m: None)
    faces = [f for r in map(json.loads, (out / "report.jsonl").open()) for f in r["faces"]
             if f["status"] == "cloaked" and "features" in f]
    loop = np.array([f["self_distance"] for f in faces])
    written = np.array([f["features"]["dlib"]["self_distance"] for f in faces])
    fooled = np.array([f["features"]["dlib"]["fooled"] for f in faces])
    size_in = sum(p.stat().st_size for p in src.iterdir())
    size_out = sum(p.stat().st_size for p in (out / "user").iterdir())
    print(json.dumps({
        "format": fmt, "preset": args.preset, "photos": len(sources),
        "cloaked": summary["by_status"].get("cloaked", 0), "faces": len(faces),
        "mean_dssim_on_file": summary["mean_dssim"] and round(summary["mean_dssim"], 5),
        "loop_self_distance": round(float(loop.mean()), 4) if len(faces) else None,
        "written_self_distance": round(float(written.mean()), 4) if len(faces) else None,
        "survives": round(float((written / loop).mean()), 3) if len(faces) else None,
        "dlib_fooled": round(float(fooled.mean()), 3) if len(faces) else None,
        "bytes_out_vs_in": round(size_out / size_in, 2)}), flush=True)


if __name__ == "__main__":
  main()
