"""A tiny random conv extractor so optimiser tests run in seconds (real-weight tests live elsewhere)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak.faces.align import ARCFACE_TEMPLATE
from jaxcloak.models.base import Extractor

SIZE = 32


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return nn.Dense(16)(x.reshape(x.shape[0], -1))


def tiny_extractor(seed: int = 0, name: str = "tiny") -> Extractor:
  net = TinyNet()
  params = net.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  return Extractor(name=name, input_size=SIZE, template=ARCFACE_TEMPLATE * SIZE / 112,
                   preprocess=lambda x: x * 2.0 - 1.0,
                   apply=lambda p, x: net.apply({"params": p}, x),
                   params=params, embedding_dim=16)


def tiny_batch(b: int = 4, s: int = 64, seed: int = 0, n_ext: int = 1):
  """Random smooth patches with a face-like landmark layout in the middle."""
  from jaxcloak.faces.align import similarity_transform
  from jaxcloak.optimize import Batch
  rng = np.random.default_rng(seed)
  base = rng.random((b, 8, 8, 3)).astype(np.float32)
  patches = np.asarray(jax.image.resize(base, (b, s, s, 3), "bilinear"))
  masks = np.ones((b, s, s), np.float32)
  lm = ARCFACE_TEMPLATE * (s / 112)
  m = similarity_transform(lm, ARCFACE_TEMPLATE * SIZE / 112).astype(np.float32)
  affines = tuple(np.tile(m, (b, 1, 1)) for _ in range(n_ext))
  t = rng.normal(size=(b, 16)).astype(np.float32)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  targets = tuple(t for _ in range(n_ext))
  return Batch(patches, masks, affines, targets, np.full((b,), 0.01, np.float32),
               np.ones((b,), bool))
