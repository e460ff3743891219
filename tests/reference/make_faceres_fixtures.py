"""Makes tests/fixtures/faceres_parity.npz: aligned crops and FaceRes embeddings from TensorFlow.js.

Run from the project root with the main venv, after `npm install` in
tests/reference (pins @tensorflow/tfjs; the pure-JS CPU backend runs it):

  .venv/bin/python tests/reference/make_faceres_fixtures.py

For one photo per identity from ../shared/data/faces (8 identities spread over
the sorted list), jaxcloak's pipeline aligns the face to faceres.TEMPLATE at
224x224 (tfjs_reference.aligned_crops); the network input is
`faceres.preprocess(crop / 255)` (caffe-normalised BGR), and TensorFlow.js runs
the pinned faceres-deep.json/.bin graph model on it to `global_pooling/Mean`.

Stored: crops [n, 224, 224, 3] uint8 RGB, embeddings [n, 1024] float32
(TensorFlow.js), files [n] str, tfjs [] str (the TensorFlow.js version).
8 faces keep the file under 1 MB (224 px crops compress poorly).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfjs_reference as ref  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from jaxcloak.models import faceres  # noqa: E402

OUT = ref.ROOT / "tests" / "fixtures" / "faceres_parity.npz"
NUM_FACES = 8


def network_input(crops: np.ndarray) -> np.ndarray:
  """uint8 RGB crops -> the graph's input, exactly as `Extractor.embed` computes it."""
  return np.asarray(faceres.preprocess(jnp.asarray(crops, jnp.float32) / 255.0))


def main() -> None:
  crops, files = ref.aligned_crops(faceres.TEMPLATE, faceres.INPUT_SIZE, NUM_FACES)
  embeddings = ref.run_tfjs(faceres.SOURCE, network_input(crops), faceres.OUTPUT_NODE)
  assert embeddings.shape == (len(files), faceres.EMBEDDING_DIM), embeddings.shape
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, crops=crops, embeddings=embeddings.astype(np.float32),
                      files=np.array(files), tfjs=np.array(ref.tfjs_version()))
  print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(files)} faces: "
        f"{', '.join(files)})")


if __name__ == "__main__":
  main()
