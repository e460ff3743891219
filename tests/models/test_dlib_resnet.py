"""dlib ResNet-29 port: parity with dlib on its own face chips, parsing, loading, gradients."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import weights
from jaxcloak.models import dlib_resnet
from tests.conftest import assert_parity, load_model

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = TESTS / "fixtures" / "dlib_parity.npz"
TEMPLATE_JSON = TESTS / "fixtures" / "dlib_template.json"
SCRIPT = TESTS / "reference" / "make_dlib_fixtures.py"


@pytest.fixture(scope="module")
def extractor():
  return load_model("dlib")


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def embed(extractor):
  return jax.jit(extractor.embed)



def test_reader_primitives():
  # Control byte: sign in bit 7, byte count in the low 4 bits; floats are
  # (mantissa, exponent) integer pairs: 0.6 as dlib writes it in the file.
  r = dlib_resnet._Reader(b"\x02\x00\x01" b"\x81\x05" b"\x03\x9a\x99\x99\x81\x18" b"\x01\x05con_4" b"1")
  assert r.int() == 256
  assert r.int() == -5
  assert r.float() == pytest.approx(0.6, abs=1e-7)
  assert r.str() == "con_4"
  assert r.bool() is True
  with pytest.raises(weights.WeightsError, match="truncated"):
    r.int()


def test_fixture_is_consistent(fixture):
  assert len(fixture["files"]) >= 8
  assert len({f.split("/")[0] for f in fixture["files"]}) == len(fixture["files"])
  assert fixture["chips"].shape[1:] == (dlib_resnet.INPUT_SIZE, dlib_resnet.INPUT_SIZE, 3)
  assert fixture["chips"].dtype == np.uint8


def test_matches_dlib_fixture(embed, extractor, fixture):
  chips = jnp.asarray(fixture["chips"], jnp.float32) / 255.0
  ours = embed(extractor.params, chips)
  assert ours.shape == (len(chips), dlib_resnet.EMBEDDING_DIM)
  assert_parity(ours, fixture["descriptors"])


def test_template_matches_derivation():
  # TEMPLATE is hand-copied from the derivation script's output.
  derived = json.loads(TEMPLATE_JSON.read_text())
  np.testing.assert_allclose(dlib_resnet.TEMPLATE, derived["template"], atol=1e-3)
  assert dlib_resnet.TEMPLATE.shape == (5, 2) and dlib_resnet.TEMPLATE.dtype == np.float32
  # YuNet order: image-left eye/mouth corner left of image-right ones, eyes above nose above mouth.
  t = dlib_resnet.TEMPLATE
  assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]
  assert t[:2, 1].max() < t[2, 1] < t[3:, 1].min()
  assert derived["check"]["cosine_mean"] > 0.98


def test_load_fails_clearly_without_weights(tmp_path):
  with pytest.raises(weights.WeightsError, match="jaxcloak weights fetch dlib"):
    dlib_resnet.load(tmp_path)


def test_load_lists_missing_keys(tmp_path, extractor):
  flat = weights.flatten(extractor.params)
  del flat["fc/kernel"]
  weights.save_safetensors(tmp_path / "dlib.safetensors", flat)
  with pytest.raises(weights.WeightsError, match="missing: fc/kernel"):
    dlib_resnet.load(tmp_path)


def test_gradient_wrt_crop_is_finite_and_nonzero(extractor, fixture):
  chip = jnp.asarray(fixture["chips"][:1], jnp.float32) / 255.0
  grad = jax.jit(jax.grad(lambda x: jnp.linalg.norm(extractor.embed(extractor.params, x))))(chip)
  grad = np.asarray(grad)
  assert grad.shape == chip.shape
  assert np.isfinite(grad).all()
  assert np.abs(grad).max() > 0


@pytest.mark.reference
def test_matches_dlib_live(embed, extractor, fixture):
  pytest.importorskip("dlib")
  spec = importlib.util.spec_from_file_location("make_dlib_fixtures", SCRIPT)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  live = script.DlibModels().descriptors(fixture["chips"])
  # The committed fixture is what this dlib gives today, and the port matches it live.
  assert_parity(live, fixture["descriptors"])
  chips = jnp.asarray(fixture["chips"], jnp.float32) / 255.0
  assert_parity(embed(extractor.params, chips), live)
