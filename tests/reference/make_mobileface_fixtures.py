"""Makes tests/fixtures/mobileface_parity.npz: aligned crops and MobileFace embeddings from TFJS.

Run from the project root with the main venv, after `npm install` in
tests/reference (pins @tensorflow/tfjs; the pure-JS CPU backend runs it):

  .venv/bin/python tests/reference/make_mobileface_fixtures.py

For one photo per identity from ../shared/data/faces (10 identities spread
over the sorted list), jaxcloak's pipeline aligns the face to
mobileface.TEMPLATE (ArcFace) at 112x112 (tfjs_reference.aligned_crops); the
network input is `mobileface.preprocess(crop / 255)` (0-255 RGB), and
TensorFlow.js runs the pinned mobileface.json/.bin graph model on it to
`batchnorm0/add_1`.

Stored: crops [n, 112, 112, 3] uint8 RGB, embeddings [n, 256] float32
(TensorFlow.js), files [n] str, tfjs [] str (the TensorFlow.js version).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfjs_reference as ref  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from jaxcloak.models import mobileface  # noqa: E402

OUT = ref.ROOT / "tests" / "fixtures" / "mobileface_parity.npz"
NUM_FACES = 10


def network_input(crops: np.ndarray) -> np.ndarray:
  """uint8 RGB crops -> the graph's input, exactly as `Extractor.embed` computes it."""
  return np.asarray(mobileface.preprocess(jnp.asarray(crops, jnp.float32) / 255.0))


def main() -> None:
  crops, files = ref.aligned_crops(mobileface.TEMPLATE, mobileface.INPUT_SIZE, NUM_FACES)
  embeddings = ref.run_tfjs(mobileface.SOURCE, network_input(crops), mobileface.OUTPUT_NODE)
  assert embeddings.shape == (len(files), mobileface.EMBEDDING_DIM), embeddings.shape
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, crops=crops, embeddings=embeddings.astype(np.float32),
                      files=np.array(files), tfjs=np.array(ref.tfjs_version()))
  print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(files)} faces: "
        f"{', '.join(files)})")


if __name__ == "__main__":
  main()
