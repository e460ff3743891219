"""TensorFlow.js graph models (`model.json` + `.bin` weight shards) read as plain data.

A TFJS graph model is a JSON file whose `modelTopology.node` list is a TF
GraphDef in protobuf-JSON form (op, name, inputs, attrs) and whose
`weightsManifest` names the weight shards (concatenated in order) and, per
weight, its name, shape, dtype and optional `quantization`. `parse` decodes
both with `json` and `numpy.frombuffer`; nothing in the files is executed.
Ports read the node list to rebuild the graph and take their arrays by name.

Decoding follows tfjs-core's `io.decodeWeights`: little-endian data, weights
back to back in manifest order; `quantization` {dtype uint8/uint16, scale,
min} dequantises as q * scale + min (in float64, as JavaScript does, then
stored as float32 or rounded to int32), {dtype float16} widens half floats.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

# Unquantised weights: manifest dtype -> (stored as, decoded as).
_DTYPES = {"float32": ("<f4", np.float32), "int32": ("<i4", np.int32),
           "float16": ("<f2", np.float32), "bool": ("u1", bool)}
# Storage dtypes of quantised weights.
_QUANTIZED = {"uint8": "u1", "uint16": "<u2", "float16": "<f2"}


@dataclasses.dataclass(frozen=True)
class Node:
  name: str
  op: str
  inputs: tuple[str, ...]  # producer names, "name:k" for output k, "^name" control edges
  attrs: dict[str, Any]  # decoded: str, int, float, bool, dtype name, shape list or lists thereof


@dataclasses.dataclass(frozen=True)
class GraphModel:
  nodes: tuple[Node, ...]
  weights: dict[str, np.ndarray]  # Const node name -> array (float32 / int32 / bool)
  meta: dict[str, Any]  # format, generatedBy, convertedBy, signature

  def node(self, name: str) -> Node:
    for n in self.nodes:
      if n.name == name:
        return n
    raise KeyError(f"no node named {name!r}")

  def ops(self, op: str) -> list[Node]:
    """Nodes of one op type, in graph order."""
    return [n for n in self.nodes if n.op == op]

  def scalar(self, name: str) -> float:
    """A scalar (or one-element) Const's value."""
    value = self.weights[name]
    if value.size != 1:
      raise ValueError(f"{name} is not a scalar: shape {value.shape}")
    return float(value.reshape(()))


def _attr(value: dict) -> Any:
  """One protobuf-JSON AttrValue -> a Python value."""
  if "list" in value:
    items = value["list"]
    out: list = []
    for key, xs in items.items():
      out.extend(_attr({key: x}) for x in xs)
    return out
  if not value:
    return None
  key, v = next(iter(value.items()))  # protobuf JSON sets one field
  if key == "s":
    return base64.b64decode(v).decode("utf-8", errors="replace")
  if key == "i":
    return int(v)  # int64 is a JSON string
  if key == "f":
    return float(v)
  if key == "b":
    return bool(v)
  if key == "type":
    return str(v)
  if key == "shape":
    if v.get("unknownRank"):
      return None
    return [int(d.get("size", -1)) for d in v.get("dim", [])]
  return v  # tensor / func: kept as the JSON object


def _decode(spec: dict, buf: memoryview, offset: int) -> tuple[np.ndarray, int]:
  """One manifest entry at `offset` of the concatenated shards -> (array, next offset)."""
  name, dtype, q = spec["name"], spec["dtype"], spec.get("quantization")
  shape = [int(d) for d in spec["shape"]]
  size = int(np.prod(shape, dtype=np.int64))
  if q is None:
    if dtype not in _DTYPES:
      raise ValueError(f"{name}: unsupported dtype {dtype!r}")
    stored, decoded = _DTYPES[dtype]
  else:
    if q["dtype"] not in _QUANTIZED:
      raise ValueError(f"{name}: unsupported quantization dtype {q['dtype']!r}")
    stored, decoded = _QUANTIZED[q["dtype"]], None
  nbytes = size * np.dtype(stored).itemsize
  if offset + nbytes > len(buf):
    raise ValueError(f"{name}: the shards end before this weight "
                     f"({len(buf)} bytes, it needs {nbytes} at {offset})")
  raw = np.frombuffer(buf, stored, size, offset).reshape(shape)
  end = offset + nbytes
  if q is None:
    return raw.astype(decoded), end
  if q["dtype"] == "float16":
    if dtype != "float32":
      raise ValueError(f"{name}: float16 quantization of a {dtype} weight")
    return raw.astype(np.float32), end
  if "scale" not in q or "min" not in q:
    raise ValueError(f"{name}: {q['dtype']} quantization without scale/min")
  # JavaScript numbers are doubles: v * scale + min, then stored once.
  real = raw.astype(np.float64) * float(q["scale"]) + float(q["min"])
  if dtype == "float32":
    return real.astype(np.float32), end
  if dtype == "int32":
    return np.floor(real + 0.5).astype(np.int32), end  # Math.round: halves go up
  raise ValueError(f"{name}: {q['dtype']} quantization of a {dtype} weight")


def parse(model_json: bytes | str | dict, shards: dict[str, bytes]) -> GraphModel:
  """Decodes a graph model from its JSON and its weight shards.

  Args:
    model_json: the model.json text (or its already-parsed dict).
    shards: shard file name (as the manifest's `paths` spell it) -> bytes.

  Returns:
    The nodes in file order and every manifest weight by name.
  """
  model = model_json if isinstance(model_json, dict) else json.loads(model_json)
  topology = model.get("modelTopology", {})
  if model.get("format", "graph-model") != "graph-model" or "node" not in topology:
    raise ValueError(f"not a TFJS graph model (format {model.get('format')!r})")
  nodes = tuple(
      Node(name=n["name"], op=n["op"], inputs=tuple(n.get("input", ())),
           attrs={k: _attr(v) for k, v in n.get("attr", {}).items()})
      for n in model["modelTopology"]["node"])
  weights: dict[str, np.ndarray] = {}
  for group in model["weightsManifest"]:
    missing = [p for p in group["paths"] if p not in shards]
    if missing:
      raise ValueError(f"weight shards missing: {', '.join(missing)}")
    buf = memoryview(b"".join(shards[p] for p in group["paths"]))
    offset = 0
    for spec in group["weights"]:
      weights[spec["name"]], offset = _decode(spec, buf, offset)
    if offset != len(buf):
      raise ValueError(f"shards {group['paths']} hold {len(buf)} bytes, manifest needs {offset}")
  meta = {k: model[k] for k in ("format", "generatedBy", "convertedBy", "signature") if k in model}
  return GraphModel(nodes=nodes, weights=weights, meta=meta)


def load(path: str | Path) -> GraphModel:
  """Reads `path` (model.json) and the shards its manifest names from the same folder."""
  path = Path(path)
  model = json.loads(path.read_text())
  names = [p for group in model.get("weightsManifest", []) for p in group["paths"]]
  return parse(model, {p: (path.parent / p).read_bytes() for p in names})
