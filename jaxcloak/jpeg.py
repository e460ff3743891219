"""A differentiable JPEG round trip, so a cloak is optimised for what the encoder keeps.

Written photos keep the input's quantisation tables by default. At the
quality most web photos have (LFW: 75, 4:2:0) the encoder's quantisation
erases much of a pixel-space cloak, so the optimisation also scores its
iterates after a simulated round trip with the tables the output is written with:
uint8 rounding, JFIF YCbCr, chroma subsampling (4:4:4, 4:2:2 or 4:2:0), 8x8
DCT, quantisation, and libjpeg's decoder ("fancy" triangle upsampling of
chroma). Rounding is straight-through: the forward value is the quantised one,
the gradient passes as if it were the identity (BPDA, Athalye et al. 2018).

Blocks are aligned to the patch origin, so callers cut regions on the
photo's MCU grid (`regions.face_region(grid=...)`).
"""

from __future__ import annotations

import functools
import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, JpegImagePlugin

# PIL's subsampling codes (JpegImagePlugin.get_sampling): chroma (rows, cols) factors.
SUBSAMPLING = {0: (1, 1), 1: (1, 2), 2: (2, 2)}


class JpegSpec(NamedTuple):
  """Per batch item: the tables and subsampling its output is written with."""
  luma: jax.Array  # [b, 8, 8] quantisation steps, natural (row-major) order
  chroma: jax.Array  # [b, 8, 8]
  subsampling: jax.Array  # [b] int: PIL code 0 (4:4:4), 1 (4:2:2), 2 (4:2:0)
  on: jax.Array  # [b] bool: False for items not written as JPEG

  @classmethod
  def stack(cls, specs) -> "JpegSpec":
    """One batch's spec from per-item (luma, chroma, subsampling, on) tuples."""
    return cls(np.stack([s[0] for s in specs]), np.stack([s[1] for s in specs]),
               np.array([s[2] for s in specs], np.int32), np.array([s[3] for s in specs], bool))


def mcu_size(subsampling: int) -> int:
  """Pixels per side of the encoder's minimum coded unit for a PIL subsampling code."""
  return 8 * max(SUBSAMPLING[subsampling])


@functools.lru_cache(maxsize=None)  # one PIL encode per quality, not one per photo
def tables_for_quality(quality: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(luma, chroma, subsampling) that PIL writes at `quality`, read back from a real encode."""
  buf = io.BytesIO()
  Image.new("RGB", (16, 16)).save(buf, format="JPEG", quality=quality)
  im = Image.open(buf)
  return (*_tables(im.quantization), JpegImagePlugin.get_sampling(im))


def _tables(qtables: dict) -> tuple[np.ndarray, np.ndarray]:
  luma = np.asarray(qtables[0], np.float32).reshape(8, 8)
  chroma = np.asarray(qtables.get(1, qtables[0]), np.float32).reshape(8, 8)
  return luma, chroma


def spec_arrays(qtables: dict | None, subsampling: int | None) -> tuple:
  """(luma, chroma, subsampling code, on) for one item; all-ones tables when off."""
  if not qtables:
    return np.ones((8, 8), np.float32), np.ones((8, 8), np.float32), 0, False
  luma, chroma = _tables(qtables)
  code = subsampling if subsampling in SUBSAMPLING else 2  # PIL's default is 4:2:0
  return luma, chroma, code, True


def _dct_matrix() -> np.ndarray:
  k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  c = np.sqrt(2.0 / 8.0) * np.cos((2 * n + 1) * k * np.pi / 16.0)
  c[0] /= np.sqrt(2.0)
  return c.astype(np.float32)  # orthonormal: JPEG's FDCT scaling


_DCT = _dct_matrix()
_TO_YCC = np.array([[0.299, 0.587, 0.114],
                    [-0.168736, -0.331264, 0.5],
                    [0.5, -0.418688, -0.081312]], np.float32)
_TO_RGB = np.linalg.inv(_TO_YCC).astype(np.float32)


def _round(x):
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _quantise_plane(p, table):
  """[H, W] plane (H, W multiples of 8, level-shifted) -> its quantised round trip."""
  h, w = p.shape
  blocks = p.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
  c = jnp.asarray(_DCT)
  coef = jnp.einsum("ij,abjk,lk->abil", c, blocks, c)
  coef = _round(coef / table) * table
  back = jnp.einsum("ji,abjk,kl->abil", c, coef, c)
  return back.transpose(0, 2, 1, 3).reshape(h, w)


def _upsample2(p, axis):
  """libjpeg's fancy upsampling along one axis: 3/4 nearer + 1/4 farther sample."""
  n = p.shape[axis]
  prev = jnp.concatenate([jax.lax.slice_in_dim(p, 0, 1, axis=axis),
                          jax.lax.slice_in_dim(p, 0, n - 1, axis=axis)], axis=axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(p, 1, n, axis=axis),
                         jax.lax.slice_in_dim(p, n - 1, n, axis=axis)], axis=axis)
  even, odd = 0.75 * p + 0.25 * prev, 0.75 * p + 0.25 * nxt
  out = jnp.stack([even, odd], axis=axis + 1)
  shape = list(p.shape)
  shape[axis] *= 2
  return out.reshape(shape)


def _chroma_round_trip(c, table, fy, fx):
  """[H, W] chroma plane through subsampling by (fy, fx), quantisation, upsampling."""
  h, w = c.shape
  small = c.reshape(h // fy, fy, w // fx, fx).mean(axis=(1, 3))
  sh, sw = small.shape
  ph, pw = -(-sh // 8) * 8, -(-sw // 8) * 8  # pad to whole blocks (edge, like libjpeg)
  small = jnp.pad(small, ((0, ph - sh), (0, pw - sw)), mode="edge")
  small = _quantise_plane(small, table)[:sh, :sw]
  if fy == 2:
    small = _upsample2(small, 0)
  if fx == 2:
    small = _upsample2(small, 1)
  return small


def round_trip(x: jax.Array, luma: jax.Array, chroma: jax.Array,
               subsampling: jax.Array | int) -> jax.Array:
  """One [H, W, 3] image in [0, 1] (H, W multiples of 16) -> its simulated JPEG decode.

  `subsampling` is a PIL code, traced (all three variants computed, one
  selected) or a Python int (only that one computed).
  """
  rgb = _round(jnp.clip(x, 0.0, 1.0) * 255.0)
  ycc = rgb @ jnp.asarray(_TO_YCC).T - jnp.array([128.0, 0.0, 0.0])  # chroma centred at 0
  y = _quantise_plane(ycc[..., 0], luma)
  cb_cr = []
  for ch in (1, 2):
    if isinstance(subsampling, int):  # known when tracing: simulate that one only
      cb_cr.append(_chroma_round_trip(ycc[..., ch], chroma, *SUBSAMPLING[subsampling]))
      continue
    variants = [_chroma_round_trip(ycc[..., ch], chroma, fy, fx)
                for fy, fx in (SUBSAMPLING[0], SUBSAMPLING[1], SUBSAMPLING[2])]
    cb_cr.append(jnp.select([subsampling == 0, subsampling == 1], variants[:2], variants[2]))
  ycc = jnp.stack([y + 128.0, cb_cr[0], cb_cr[1]], axis=-1)
  out = _round(jnp.clip(ycc @ jnp.asarray(_TO_RGB).T, 0.0, 255.0))
  return out / 255.0


def apply(x: jax.Array, spec: JpegSpec | None) -> jax.Array:
  """[b, H, W, 3] batch -> simulated JPEG decode where `spec.on`, else unchanged."""
  if spec is None:
    return x
  y = jax.vmap(round_trip)(x, spec.luma, spec.chroma, spec.subsampling)
  return jnp.where(spec.on[:, None, None, None], y, x)
