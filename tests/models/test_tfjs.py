"""TFJS graph-model parser: manifest dtypes, quantisation, shards, attrs, errors."""

import base64
import json

import numpy as np
import pytest

from jaxcloak.models import tfjs


def _model(weights, paths=("w.bin",), nodes=None):
  return {
      "format": "graph-model", "generatedBy": "test", "convertedBy": "test",
      "modelTopology": {"node": nodes or [{"name": "x", "op": "Placeholder"}]},
      "weightsManifest": [{"paths": list(paths), "weights": weights}],
  }


def test_plain_dtypes_in_manifest_order_across_shards():
  a = np.arange(6, dtype="<f4").reshape(2, 3)
  b = np.array([-7, 1 << 30], "<i4")
  c = np.array([0.5, -2.0, 65504.0], "<f2")
  d = np.array([1, 0, 1], "u1")
  blob = a.tobytes() + b.tobytes() + c.tobytes() + d.tobytes()
  spec = [{"name": "a", "shape": [2, 3], "dtype": "float32"},
          {"name": "b", "shape": [2], "dtype": "int32"},
          {"name": "c", "shape": [3], "dtype": "float16"},
          {"name": "d", "shape": [3], "dtype": "bool"}]
  # Split mid-weight: shards are one buffer concatenated in `paths` order.
  g = tfjs.parse(json.dumps(_model(spec, ("1.bin", "2.bin"))),
                 {"1.bin": blob[:10], "2.bin": blob[10:]})
  np.testing.assert_array_equal(g.weights["a"], a)
  assert g.weights["a"].dtype == np.float32
  np.testing.assert_array_equal(g.weights["b"], b)
  assert g.weights["b"].dtype == np.int32
  np.testing.assert_array_equal(g.weights["c"], c.astype(np.float32))
  assert g.weights["c"].dtype == np.float32
  np.testing.assert_array_equal(g.weights["d"], [True, False, True])


def test_quantised_weights_dequantise_as_tfjs():
  q8 = np.array([0, 1, 255], "u1")
  q16 = np.array([0, 40000], "<u2")
  h = np.array([1.5, -0.25], "<f2")
  qi = np.array([0, 1, 2, 3], "u1")
  blob = q8.tobytes() + q16.tobytes() + h.tobytes() + qi.tobytes()
  spec = [
      {"name": "q8", "shape": [3], "dtype": "float32",
       "quantization": {"dtype": "uint8", "scale": 0.1, "min": -1.0}},
      {"name": "q16", "shape": [2], "dtype": "float32",
       "quantization": {"dtype": "uint16", "scale": 1e-4, "min": 0.5}},
      {"name": "h", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
      {"name": "qi", "shape": [4], "dtype": "int32",
       "quantization": {"dtype": "uint8", "scale": 0.5, "min": 0.0}},
  ]
  g = tfjs.parse(_model(spec), {"w.bin": blob})
  # Computed in doubles (JavaScript numbers), stored once as float32.
  np.testing.assert_array_equal(g.weights["q8"], np.float32(np.float64([0, 1, 255]) * 0.1 - 1.0))
  np.testing.assert_array_equal(g.weights["q16"], np.float32([0.5, 40000 * 1e-4 + 0.5]))
  np.testing.assert_array_equal(g.weights["h"], [1.5, -0.25])
  np.testing.assert_array_equal(g.weights["qi"], [0, 1, 1, 2])  # Math.round(0.5) = 1, (1.5) = 2
  assert g.weights["qi"].dtype == np.int32


def test_nodes_and_attrs_are_decoded():
  nodes = [
      {"name": "x", "op": "Placeholder",
       "attr": {"shape": {"shape": {"dim": [{"size": "-1"}, {"size": "8"}]}},
                "dtype": {"type": "DT_FLOAT"}}},
      {"name": "c", "op": "Conv2D", "input": ["x", "k", "^x"],
       "attr": {"strides": {"list": {"i": ["1", "2", "2", "1"]}},
                "padding": {"s": base64.b64encode(b"SAME").decode()},
                "explicit_paddings": {"list": {}},
                "use_cudnn_on_gpu": {"b": True}, "epsilon": {"f": 0.001}}},
  ]
  g = tfjs.parse(_model([{"name": "k", "shape": [], "dtype": "float32"}], nodes=nodes),
                 {"w.bin": np.float32([3.0]).tobytes()})
  assert g.node("x").attrs == {"shape": [-1, 8], "dtype": "DT_FLOAT"}
  conv = g.ops("Conv2D")[0]
  assert conv.inputs == ("x", "k", "^x")
  assert conv.attrs == {"strides": [1, 2, 2, 1], "padding": "SAME", "explicit_paddings": [],
                        "use_cudnn_on_gpu": True, "epsilon": 0.001}
  assert g.scalar("k") == 3.0
  assert g.meta["format"] == "graph-model"
  with pytest.raises(KeyError):
    g.node("nope")


def test_load_reads_shards_beside_the_json(tmp_path):
  (tmp_path / "w.bin").write_bytes(np.float32([1, 2]).tobytes())
  (tmp_path / "m.json").write_text(json.dumps(
      _model([{"name": "v", "shape": [2], "dtype": "float32"}])))
  np.testing.assert_array_equal(tfjs.load(tmp_path / "m.json").weights["v"], [1, 2])


@pytest.mark.parametrize("blob, match", [
    (np.float32([1, 2, 3]).tobytes(), "hold 12 bytes, manifest needs 8"),
    (np.float32([1]).tobytes(), "v: the shards end before this weight"),
])
def test_size_mismatch_fails(blob, match):
  with pytest.raises(ValueError, match=match):
    tfjs.parse(_model([{"name": "v", "shape": [2], "dtype": "float32"}]), {"w.bin": blob})


def test_rejects_what_it_cannot_read():
  with pytest.raises(ValueError, match="not a TFJS graph model"):
    tfjs.parse({"format": "layers-model", "modelTopology": {}}, {})
  with pytest.raises(ValueError, match="shards missing: w.bin"):
    tfjs.parse(_model([]), {})
  with pytest.raises(ValueError, match="unsupported dtype 'string'"):
    tfjs.parse(_model([{"name": "s", "shape": [1], "dtype": "string"}]), {"w.bin": b""})
  with pytest.raises(ValueError, match="without scale/min"):
    tfjs.parse(_model([{"name": "q", "shape": [1], "dtype": "float32",
                        "quantization": {"dtype": "uint8"}}]), {"w.bin": b"\0"})
