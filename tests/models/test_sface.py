"""SFace port: parity with onnxruntime on real aligned faces, loading, gradients."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import weights
from jaxcloak.models import sface
from tests.conftest import assert_parity, load_model

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = TESTS / "fixtures" / "sface_parity.npz"
SCRIPT = TESTS / "reference" / "make_sface_fixtures.py"


@pytest.fixture(scope="module")
def extractor():
  return load_model("sface")


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(FIXTURE))



def test_fixture_is_consistent(fixture):
  assert len(fixture["files"]) >= 8
  assert len({f.split("/")[0] for f in fixture["files"]}) == len(fixture["files"])
  assert fixture["crops"].shape[1:] == (sface.INPUT_SIZE, sface.INPUT_SIZE, 3)
  assert fixture["crops"].dtype == np.uint8
  # OpenCV's FaceRecognizerSF (BGR crop, swapRB=true) agrees with onnxruntime
  # fed RGB: the channel order the port assumes.
  assert_parity(fixture["cv2_embeddings"], fixture["embeddings"])


def test_matches_onnxruntime_fixture(extractor, fixture):
  crops = jnp.asarray(fixture["crops"], jnp.float32)  # raw 0-255 RGB, as fed to onnxruntime
  assert_parity(jax.jit(extractor.apply)(extractor.params, crops), fixture["embeddings"])


def test_embed_from_unit_range_matches(extractor, fixture):
  crops = jnp.asarray(fixture["crops"][:4], jnp.float32) / 255.0
  out = jax.jit(extractor.embed)(extractor.params, crops)
  assert out.shape == (4, sface.EMBEDDING_DIM)
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
  assert sface.TEMPLATE.shape == (5, 2) and sface.TEMPLATE.dtype == np.float32
  assert ((sface.TEMPLATE > 0) & (sface.TEMPLATE < sface.INPUT_SIZE)).all()
  np.testing.assert_allclose(sface.TEMPLATE[0], [38.2946, 51.6963])


def test_load_without_weights_names_the_fetch_command(tmp_path):
  with pytest.raises(weights.WeightsError, match="jaxcloak weights fetch sface"):
    sface.load(tmp_path)


def test_load_rejects_mismatched_params(tmp_path, extractor):
  arrays = weights.flatten(extractor.params)
  del arrays["fc1/var"]
  arrays["extra/kernel"] = np.zeros(3, np.float32)
  weights.save_safetensors(tmp_path / "sface.safetensors", arrays)
  with pytest.raises(weights.WeightsError, match=r"(?s)missing: fc1/var.*unexpected: extra/kernel"):
    sface.load(tmp_path)


def _reference_script():
  spec = importlib.util.spec_from_file_location("make_sface_fixtures", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.reference
def test_matches_onnxruntime_live(extractor, fixture):
  pytest.importorskip("onnxruntime")
  ref = _reference_script()
  raw = ref.read_member(sface.SOURCE)
  live = ref.ort_embed(ref.ort_session(raw), fixture["crops"])
  assert_parity(live, fixture["embeddings"])
  crops = jnp.asarray(fixture["crops"], jnp.float32)
  assert_parity(jax.jit(extractor.apply)(extractor.params, crops), live)


@pytest.mark.reference
def test_dequantisation_is_bit_exact(tmp_path):
  """convert()'s int8 dequantisation equals the graph's DequantizeLinear outputs."""
  ort = pytest.importorskip("onnxruntime")
  import onnx
  ref = _reference_script()
  raw = ref.read_member(sface.SOURCE)
  model = onnx.load_from_string(ref.clean_model_bytes(raw))
  names = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
  model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  graph_values = session.run(names, {"data": np.zeros((1, 3, 112, 112), np.float32)})
  path = tmp_path / "sface.onnx"
  path.write_bytes(raw)
  ours = sface._graph_tensors(path)
  assert len(names) == 29
  for name, value in zip(names, graph_values):
    np.testing.assert_array_equal(ours[name].view(np.int32), value.view(np.int32), err_msg=name)
