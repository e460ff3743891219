"""MobileFace port: parity with TensorFlow.js on real aligned faces, loading, gradients."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import weights
from jaxcloak.models import mobileface, sface
from tests.conftest import assert_parity, load_model

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = TESTS / "fixtures" / "mobileface_parity.npz"
SCRIPT = TESTS / "reference" / "make_mobileface_fixtures.py"


@pytest.fixture(scope="module")
def extractor():
  return load_model("mobileface")


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


def test_fixture_is_consistent(fixture):
  assert len(fixture["files"]) >= 8
  assert len({f.split("/")[0] for f in fixture["files"]}) == len(fixture["files"])
  assert fixture["crops"].shape[1:] == (mobileface.INPUT_SIZE, mobileface.INPUT_SIZE, 3)
  assert fixture["crops"].dtype == np.uint8
  assert fixture["embeddings"].shape == (len(fixture["files"]), mobileface.EMBEDDING_DIM)


def test_matches_tfjs_fixture(extractor, fixture):
  x = jnp.asarray(fixture["crops"], jnp.float32)  # 0-255 RGB, as fed to TensorFlow.js
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), fixture["embeddings"])


def test_embed_from_unit_range_matches(extractor, fixture):
  crops = jnp.asarray(fixture["crops"][:4], jnp.float32) / 255.0
  out = jax.jit(extractor.embed)(extractor.params, crops)
  assert out.shape == (4, mobileface.EMBEDDING_DIM)
  assert_parity(out, fixture["embeddings"][:4])


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


def test_template_is_the_arcface_112_template():
  np.testing.assert_array_equal(mobileface.TEMPLATE, sface.TEMPLATE)


def test_load_without_weights_names_the_fetch_command(tmp_path):
  with pytest.raises(weights.WeightsError, match="jaxcloak weights fetch mobileface"):
    mobileface.load(tmp_path)


def test_load_rejects_mismatched_params(tmp_path, extractor):
  arrays = weights.flatten(extractor.params)
  del arrays["stage4_unit1/prelu2/gamma"]
  arrays["extra/kernel"] = np.zeros(3, np.float32)
  weights.save_safetensors(tmp_path / "mobileface.safetensors", arrays)
  with pytest.raises(weights.WeightsError,
                     match=r"(?s)missing: stage4_unit1/prelu2/gamma.*unexpected: extra/kernel"):
    mobileface.load(tmp_path)


def _reference_script():
  spec = importlib.util.spec_from_file_location("make_mobileface_fixtures", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.reference
def test_matches_tfjs_live(extractor, fixture):
  ref = _reference_script()
  why = ref.ref.node_ready()
  if why:
    pytest.skip(why)
  x = np.asarray(fixture["crops"], np.float32)
  live = ref.ref.run_tfjs(mobileface.SOURCE, x, mobileface.OUTPUT_NODE)
  assert_parity(live, fixture["embeddings"])
  assert_parity(jax.jit(extractor.apply)(extractor.params, x), live)
