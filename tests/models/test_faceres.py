"""FaceRes port: parity with TensorFlow.js on real aligned faces, loading, gradients."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import weights
from jaxcloak.models import faceres, sface
from tests.conftest import assert_parity, load_model

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = TESTS / "fixtures" / "faceres_parity.npz"
SCRIPT = TESTS / "reference" / "make_faceres_fixtures.py"


@pytest.fixture(scope="module")
def extractor():
  return load_model("faceres")


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


def network_input(crops):
  # The fixture's reference ran on exactly this (make_faceres_fixtures.network_input).
  return faceres.preprocess(jnp.asarray(crops, jnp.float32) / 255.0)


def test_fixture_is_consistent(fixture):
  assert len(fixture["files"]) >= 8
  assert len({f.split("/")[0] for f in fixture["files"]}) == len(fixture["files"])
  assert fixture["crops"].shape[1:] == (faceres.INPUT_SIZE, faceres.INPUT_SIZE, 3)
  assert fixture["crops"].dtype == np.uint8
  assert fixture["embeddings"].shape == (len(fixture["files"]), faceres.EMBEDDING_DIM)


def test_matches_tfjs_fixture(extractor, fixture):
  x = network_input(fixture["crops"])
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), fixture["embeddings"])


def test_embed_from_unit_range_matches(extractor, fixture):
  crops = jnp.asarray(fixture["crops"][:4], jnp.float32) / 255.0
  out = jax.jit(extractor.embed)(extractor.params, crops)
  assert out.shape == (4, faceres.EMBEDDING_DIM)
  assert_parity(out, fixture["embeddings"][:4])


def test_preprocess_is_caffe_bgr():
  x = jnp.zeros((1, 2, 2, 3)).at[..., 0].set(1.0)  # pure red
  np.testing.assert_allclose(faceres.preprocess(x)[0, 0, 0], [-103.939, -116.779, 255.0 - 123.68],
                             rtol=1e-6)


def test_embedding_gradient_is_finite_and_nonzero(extractor, fixture):
  crops = jnp.asarray(fixture["crops"][:2], jnp.float32) / 255.0
  target = jnp.asarray(fixture["embeddings"][2:4])

  def loss(x):
    e = extractor.embed(extractor.params, x)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    t = target / jnp.linalg.norm(target, axis=-1, keepdims=True)
    return jnp.sum((e - t) ** 2)

  g = np.asarray(jax.jit(jax.grad(loss))(crops))
  assert np.isfinite(g).all()
  assert (np.abs(g) > 0).mean() > 0.5
  assert np.abs(g).max() > 0


def test_template_is_the_scaled_arcface_template():
  assert faceres.TEMPLATE.shape == (5, 2) and faceres.TEMPLATE.dtype == np.float32
  np.testing.assert_allclose(faceres.TEMPLATE, sface.TEMPLATE * 2, rtol=1e-6)


def test_load_without_weights_names_the_fetch_command(tmp_path):
  with pytest.raises(weights.WeightsError, match="jaxcloak weights fetch faceres"):
    faceres.load(tmp_path)


def test_load_rejects_mismatched_params(tmp_path, extractor):
  arrays = weights.flatten(extractor.params)
  del arrays["conv_dw_13/scale"]
  arrays["age_pred/kernel"] = np.zeros((256, 100), np.float32)
  weights.save_safetensors(tmp_path / "faceres.safetensors", arrays)
  with pytest.raises(weights.WeightsError,
                     match=r"(?s)missing: conv_dw_13/scale.*unexpected: age_pred/kernel"):
    faceres.load(tmp_path)


def _reference_script():
  spec = importlib.util.spec_from_file_location("make_faceres_fixtures", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.reference
def test_matches_tfjs_live(extractor, fixture):
  ref = _reference_script()
  why = ref.ref.node_ready()
  if why:
    pytest.skip(why)
  x = np.asarray(network_input(fixture["crops"][:2]))
  live = ref.ref.run_tfjs(faceres.SOURCE, x, faceres.OUTPUT_NODE)
  assert_parity(live, fixture["embeddings"][:2])
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), live)
