"""Random views of a model's input, for expectation over transformations (EOT).

A tracker crops, resizes, blurs and re-compresses faces in ways the cloak
cannot know, so the loop scores each iterate through random views of every
model's aligned crop (Athalye et al. 2018; LowKey, Cherepanova et al. 2021):
a jittered alignment (the warp is already differentiable), a horizontal flip,
a Gaussian blur of random sigma, a JPEG round trip at a random quality
(`jpeg.py`), additive noise. Each kind is applied to each item with
probability 1/2, so views mix kinds. Everything is jnp and keyed, so results
are deterministic for a seed.

Crops are float32 [b, s, s, 3] in [0, 1]; affines are [b, 2, 3] (patch -> crop).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import jpeg

KINDS = ("affine", "flip", "blur", "jpeg", "noise")
SCALE = 0.10  # alignment jitter: scale +-10%,
SHIFT = 0.05  # shift +-5% of the crop side,
ROTATE = np.deg2rad(10.0)  # rotation +-10 degrees
MAX_SIGMA = 2.0  # blur sigma ~ U[0, 2] pixels of the crop
QUALITY = (40.0, 95.0)  # JPEG quality ~ U[40, 95], 4:2:0 as most encoders write
MAX_NOISE = 0.03  # Gaussian noise std ~ U[0, 0.03]
_RADIUS = 6  # blur taps: 3 sigma at the largest sigma
_P = 0.5


def _per_item(key, b: int, draw):
  """[b, ...] draws, item i's from key folded with i: what an item draws does not depend on
  how many items share its batch (a face gets the same views padded or not)."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(b))
  return jax.vmap(draw)(keys)


def jitter_affines(key, affines: jax.Array, size: int) -> jax.Array:
  """[b, 2, 3] patch->crop affines composed with a random similarity about the crop centre."""
  b = affines.shape[0]
  ks, kr, kt, kon = jax.random.split(key, 4)
  scale = 1.0 + _per_item(ks, b, lambda k: jax.random.uniform(k, (), minval=-SCALE,
                                                               maxval=SCALE))
  angle = _per_item(kr, b, lambda k: jax.random.uniform(k, (), minval=-ROTATE, maxval=ROTATE))
  shift = _per_item(kt, b, lambda k: jax.random.uniform(k, (2,), minval=-SHIFT,
                                                        maxval=SHIFT)) * size
  on = _per_item(kon, b, lambda k: jax.random.bernoulli(k, _P))
  scale, angle = jnp.where(on, scale, 1.0), jnp.where(on, angle, 0.0)
  shift = jnp.where(on[:, None], shift, 0.0)
  c = (size - 1) / 2.0
  cos, sin = scale * jnp.cos(angle), scale * jnp.sin(angle)
  linear = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)  # [b, 2, 2]
  t = c - jnp.einsum("bij,j->bi", linear, jnp.array([c, c])) + shift
  jitter = jnp.concatenate([linear, t[..., None]], axis=-1)  # crop -> crop
  full = jnp.concatenate([affines, jnp.broadcast_to(jnp.array([[[0.0, 0.0, 1.0]]]), (b, 1, 3))], 1)
  return jnp.einsum("bij,bjk->bik", jitter, full)


def _edge_taps(n: int) -> np.ndarray:
  """[13, n, n] one-hot: tap k of output i reads input clip(i + k - 6), edge padding."""
  idx = np.clip(np.arange(n)[None, :] + np.arange(-_RADIUS, _RADIUS + 1)[:, None], 0, n - 1)
  return (idx[..., None] == np.arange(n)).astype(np.float32)


def _blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """Per-item Gaussian blur: [b, s, s, c], [b] sigma (0 = unchanged), edge-padded.

  Each item's 13 taps, edge padding folded in, form an [s, s] band matrix, so
  the blur is two batched matmuls. Shifted, weighted slices of a padded copy
  (26 pad-multiply-add passes, and their gradients) took ~15% of the `mid`
  step on XLA CPU; a depthwise convolution is slower still.
  """
  offsets = jnp.arange(-_RADIUS, _RADIUS + 1, dtype=jnp.float32)
  s = jnp.maximum(sigma, 1e-3)[:, None]
  taps = jnp.exp(-0.5 * jnp.square(offsets[None] / s))
  taps = taps / jnp.sum(taps, axis=1, keepdims=True)  # [b, 13]
  band = jnp.einsum("bk,kij->bij", taps, jnp.asarray(_edge_taps(x.shape[1])))  # [b, s, s]
  x = jnp.einsum("bij,bjwc->biwc", band, x)  # along rows
  return jnp.einsum("bij,bhjc->bhic", band, x)  # along columns


def _quality_tables(quality: jax.Array) -> tuple[jax.Array, jax.Array]:
  """IJG quality scaling of the standard tables, in jnp: [b] quality -> [b, 8, 8] x 2."""
  base_luma, base_chroma, _ = jpeg.tables_for_quality(50)  # quality 50 = the base tables
  q = jnp.clip(quality, 1.0, 100.0)
  scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None]

  def scaled(base):
    return jnp.clip(jnp.floor((jnp.asarray(base) * scale + 50.0) / 100.0), 1.0, 255.0)

  return scaled(base_luma), scaled(base_chroma)


def _jpeg(x: jax.Array, quality: jax.Array) -> jax.Array:
  """Per-item JPEG 4:2:0 round trip of [b, s, s, 3] crops (edge-padded to whole MCUs)."""
  n = x.shape[1]
  side = -(-n // 16) * 16
  xp = jnp.pad(x, ((0, 0), (0, side - n), (0, side - n), (0, 0)), mode="edge")
  luma, chroma = _quality_tables(quality)
  out = jax.vmap(lambda im, lu, ch: jpeg.round_trip(im, lu, ch, 2))(xp, luma, chroma)
  return out[:, :n, :n]


def apply_pixel_views(key, crops: jax.Array, kinds: Sequence[str]) -> jax.Array:
  """Random flip / blur / JPEG / noise of [b, s, s, 3] crops, each kind with probability 1/2."""
  b = crops.shape[0]
  keys = dict(zip(KINDS, jax.random.split(key, len(KINDS))))
  x = crops

  def coin(k):
    return _per_item(jax.random.fold_in(k, 1), b, lambda kk: jax.random.bernoulli(kk, _P))

  if "flip" in kinds:
    x = jnp.where(coin(keys["flip"])[:, None, None, None], x[:, :, ::-1], x)
  if "blur" in kinds:
    sigma = _per_item(keys["blur"], b, lambda k: jax.random.uniform(k, (), maxval=MAX_SIGMA))
    x = _blur(x, jnp.where(coin(keys["blur"]), sigma, 0.0))
  if "jpeg" in kinds:
    quality = _per_item(keys["jpeg"], b, lambda k: jax.random.uniform(
        k, (), minval=QUALITY[0], maxval=QUALITY[1]))
    x = jnp.where(coin(keys["jpeg"])[:, None, None, None], _jpeg(x, quality), x)
  if "noise" in kinds:
    k1, k2 = jax.random.split(keys["noise"])
    std = _per_item(k1, b, lambda k: jax.random.uniform(k, (1, 1, 1), maxval=MAX_NOISE))
    std = jnp.where(coin(keys["noise"])[:, None, None, None], std, 0.0)
    noise = _per_item(k2, b, lambda k: jax.random.normal(k, x.shape[1:]))
    x = jnp.clip(x + std * noise, 0.0, 1.0)
  return x
