"""Verification accuracy of candidate crop templates and input normalisations for an extractor.

  .venv/bin/python benchmarks/templates.py --model faceres [--seed 1] [--cache /tmp/lm.npz]

Each extractor's TEMPLATE says where the 5 YuNet landmarks sit in the crop it
was trained on. For the TFJS ports that crop is only known in words (HSE:
the MTCNN box grown by 10 px a side, resized to 224x224, not
aspect-preserving; MobileFace: insightface's ArcFace-aligned 112x112), so a
few geometric candidates and the input normalisations their sources suggest
are scored here with benchmarks/verification.py's pairs, detection and
2-fold protocol (same functions), and the best kept in the model module.

Candidates are picked on --seed 1 pairs by default, so the seed-0 figure that
benchmarks/verification.py then reports (BUILD.md) is not the one that chose
them. YuNet runs once per photo; `--cache` keeps its landmarks across runs.

Candidate templates (crop pixels, YuNet order):
  faceres `hse`: the HSE crop's landmark positions, transferred from
    facenet.TEMPLATE (measured in MTCNN box + 16 px crops, mean box 94x126
    px): p_hse = (p_facenet * (box + 32) / 160 - 6) * 224 / (box + 20) per axis.
  `arcface`: the ArcFace 112 template scaled to the input size.
  `...@z`: zoomed by z about the crop centre (z > 1: tighter crop);
  `...-d` / `...+d`: landmarks d px higher / lower in the crop.
Normalisations: faceres `caffe` (0-255 BGR minus ImageNet means: HSE's
`facial_analysis.py` and Keras `preprocess_input`) or `rgb255` (what Human's
faceres.ts feeds); mobileface `rgb` (insightface lfw.bin, decoded RGB), `bgr`
(MobileFace's example reads crops with cv2) or `gray` (luma in all three
channels, after Human's obsolete embedding.ts).

Last seen 2026-12-01 (2 shared CPU cores, jax 0.10.2; seed 1, 3,000 pairs,
18 failed, pipeline detector; full table in BUILD.md, "Templates of the TFJS
ports"), accuracy / AUC:
  faceres: arcface/caffe 0.916 / 0.9778 (kept), hse@1.1/caffe 0.916 / 0.9781,
    hse/caffe 0.907, hse/rgb255 0.891, other geometries 0.891-0.913.
  mobileface: arcface/rgb 0.917 / 0.9784 (kept), gray 0.895, bgr 0.874,
    arcface@0.9 0.900, arcface@1.1 0.892.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax.numpy as jnp  # noqa: E402

import verification as vb  # noqa: E402
from jaxcloak import models  # noqa: E402
from jaxcloak.faces.detect import Detector  # noqa: E402
from jaxcloak.models import facenet, sface  # noqa: E402

# facenet.TEMPLATE's crop: MTCNN box (mean 94 x 126 px on these faces, from
# tests/reference/derive_facenet_template.py) + 16 px a side -> 160x160.
_MTCNN_BOX = np.array([94.0, 126.0])


def hse_template() -> np.ndarray:
  """facenet.TEMPLATE moved into HSE's crop: MTCNN box + 10 px a side -> 224x224."""
  source = facenet.TEMPLATE * (_MTCNN_BOX + 32) / 160 - 16  # px from the box corner
  return ((source + 10) * 224 / (_MTCNN_BOX + 20)).astype(np.float32)


def zoom(template: np.ndarray, z: float, size: int) -> np.ndarray:
  c = size / 2.0
  return ((template - c) * z + c).astype(np.float32)


def shift(template: np.ndarray, dy: float) -> np.ndarray:
  return (template + np.array([0.0, dy])).astype(np.float32)


def _gray(x):
  # ITU-R 601 luma, as Human's embedding.ts.
  y = x[..., 0:1] * 0.2989 + x[..., 1:2] * 0.5870 + x[..., 2:3] * 0.1140
  return jnp.concatenate([y, y, y], axis=-1) * 255.0


def candidates(name: str, grid: bool = False) -> dict[str, tuple[np.ndarray, object]]:
  """Label -> (template, preprocess) for one extractor."""
  from jaxcloak.models import faceres, mobileface
  if name == "faceres":
    hse, arc = hse_template(), sface.TEMPLATE * 2.0
    geoms = {"hse": hse, "hse@0.9": zoom(hse, 0.9, 224), "hse@1.1": zoom(hse, 1.1, 224),
             "hse@1.2": zoom(hse, 1.2, 224), "arcface": arc, "arcface@0.85": zoom(arc, 0.85, 224),
             "arcface@1.1": zoom(arc, 1.1, 224), "arcface-8": shift(arc, -8),
             "arcface+8": shift(arc, 8), "arcface@1.1-8": shift(zoom(arc, 1.1, 224), -8)}
    norms = {"caffe": faceres.preprocess, "rgb255": lambda x: x * 255.0}
  elif name == "mobileface":
    arc = sface.TEMPLATE
    geoms = {"arcface": arc, "arcface@0.9": zoom(arc, 0.9, 112), "arcface@1.1": zoom(arc, 1.1, 112)}
    norms = {"rgb": mobileface.preprocess, "bgr": lambda x: x[..., ::-1] * 255.0, "gray": _gray}
  else:
    raise SystemExit(f"no candidates for {name}")
  # Every geometry with the first normalisation, every normalisation with the
  # first geometry (the grid's other cells on request, with --grid).
  first_geom, first_norm = next(iter(geoms)), next(iter(norms))
  return {f"{g}/{n}": (geoms[g], norms[n]) for g in geoms for n in norms
          if grid or g == first_geom or n == first_norm}


def landmarks_for(files: list[Path], cache: Path | None):
  """YuNet central-face landmarks per file ([m, 5, 2], found [m]), reusing `cache`."""
  known: dict[str, tuple[np.ndarray, bool]] = {}
  if cache and cache.exists():
    with np.load(cache) as z:
      known = {k: (l, bool(f)) for k, l, f in zip(z["files"], z["landmarks"], z["found"])}
  keys = [str(f.relative_to(vb.FACES.resolve())) if f.is_absolute() else str(f) for f in files]
  todo = [i for i, k in enumerate(keys) if k not in known]
  if todo:
    lm, found = vb.central_landmarks(Detector(), vb.decode([files[i] for i in todo]))
    known.update({keys[i]: (lm[j], bool(found[j])) for j, i in enumerate(todo)})
    if cache:
      ks = sorted(known)
      np.savez(cache, files=np.array(ks), landmarks=np.stack([known[k][0] for k in ks]),
               found=np.array([known[k][1] for k in ks]))
  return (np.stack([known[k][0] for k in keys]).astype(np.float32),
          np.array([known[k][1] for k in keys]))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", required=True)
  ap.add_argument("--only", nargs="*", help="candidate labels to run (default: all)")
  ap.add_argument("--grid", action="store_true", help="every geometry x normalisation")
  ap.add_argument("--seed", type=int, default=1)
  ap.add_argument("--same", type=int, default=1500)
  ap.add_argument("--different", type=int, default=1500)
  ap.add_argument("--per-identity", type=int, default=20)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--cache", type=Path, help="npz of YuNet landmarks per photo, reused")
  args = ap.parse_args()

  faces = vb.FACES.resolve()
  files, pairs, same, half = vb.sample_pairs(
      vb.list_identities(faces), n_same=args.same, n_different=args.different,
      per_identity=args.per_identity, seed=args.seed)
  used = np.unique(pairs)
  files = [files[i] for i in used]
  pairs = np.searchsorted(used, pairs)
  t = time.perf_counter()
  landmarks, found = landmarks_for(files, args.cache)
  photos = vb.decode(files)
  ok = found[pairs].all(axis=1)
  print(json.dumps({"benchmark": "templates", "model": args.model, "seed": args.seed,
                    "pairs": len(pairs), "failed_pairs": int((~ok).sum()),
                    "setup_s": round(time.perf_counter() - t, 1)}), flush=True)

  base = models.load(args.model)
  for label, (template, prep) in candidates(args.model, args.grid).items():
    if args.only and label not in args.only:
      continue
    ext = dataclasses.replace(base, template=template, preprocess=prep)
    t = time.perf_counter()
    emb, _ = vb.embed_all(ext, photos, landmarks, found, args.batch_size)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    r = vb.two_fold((unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(-1), same, half, ok)
    print(json.dumps({"model": args.model, "candidate": label,
                      "accuracy": round(r["accuracy"], 4),
                      "accuracy_detected": round(r["accuracy_detected"], 4),
                      "auc": round(r["auc"], 5), "threshold": round(r["threshold"], 3),
                      "template": np.round(template.astype(np.float64), 2).tolist(),
                      "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
  main()
