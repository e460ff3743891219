"""Pure loss pieces of the cloak objective (Fawkes, Shan et al. 2020, §4 and Eq. 3).

Images are float32 [b, h, w, 3] in [0, 1]; every function returns per-image
values [b] so the caller reduces once.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  t = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
  return (t / t.sum()).astype(np.float32)


def _band(n: int, taps: np.ndarray) -> jax.Array:
  """[n - k + 1, n] banded matrix: a 'valid' 1-D convolution as a matmul."""
  k = len(taps)
  m = np.zeros((n - k + 1, n), np.float32)
  for i in range(n - k + 1):
    m[i, i:i + k] = taps
  return jnp.asarray(m)


def separable_gaussian(x: jax.Array) -> jax.Array:
  """dm_pix's SSIM window (11 taps, sigma 1.5, 'valid') as two banded matmuls.

  Same numbers as dm_pix's default filter (tested), but about 10x faster
  forward+backward on CPU, where XLA's depthwise convolutions are slow; SSIM
  otherwise dominated the cloak step.
  """
  taps = _gaussian_taps()
  h, w = x.shape[-3], x.shape[-2]
  x = jnp.einsum("oh,...hwc->...owc", _band(h, taps), x, precision="highest")
  return jnp.einsum("pw,...owc->...opc", _band(w, taps), x, precision="highest")


def ssim(a: jax.Array, b: jax.Array, *, return_map: bool = False) -> jax.Array:
  """dm_pix SSIM (defaults: 11x11 Gaussian, sigma 1.5, k1 0.01, k2 0.03) with the fast filter."""
  return dm_pix.ssim(a, b, return_map=return_map, filter_fn=separable_gaussian)


SSIM_WINDOW = 11  # dm_pix's default filter size


def window_mask(mask: jax.Array) -> jax.Array:
  """[b, h-10, w-10]: 1 for each SSIM window lying wholly inside the region.

  The one masking rule: with it, a region's DSSIM is dm_pix's SSIM of the
  region's own crop, whatever padding surrounds it, in the loop and on the
  written file (`faces.regions.region_dssim`) alike.
  """
  k = SSIM_WINDOW
  return -jax.lax.reduce_window(-mask, -jnp.inf, jax.lax.max, (1, k, k), (1, 1, 1), "VALID")


def _masked_ssim_map(a, b, mask):
  """SSIM map [b, h-10, w-10] (mean over channels) and the region mask on its windows."""
  ssim_map = jnp.mean(ssim(a, b, return_map=True), axis=-1)  # 'valid' windows
  return ssim_map, window_mask(mask)


def dssim(a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Structural dissimilarity (1 - SSIM) / 2 per image, in [0, 1].

  Args:
    a, b: [b, h, w, c] in [0, 1].
    mask: optional [b, h, w] (1 = pixel belongs to the region). SSIM is averaged
      only over windows wholly inside the region (`window_mask`), so padding a
      face region to a bucket size does not change its DSSIM.
  Returns:
    [b] DSSIM values.
  """
  if mask is None:
    return (1.0 - ssim(a, b)) / 2.0
  ssim_map, m = _masked_ssim_map(a, b, mask)
  mean_ssim = jnp.sum(ssim_map * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
  return (1.0 - mean_ssim) / 2.0


TILES = 8  # tiles per side of a region's bucket: each an eye-sized eighth of it


def visibility(a: jax.Array, b: jax.Array, mask: jax.Array, block
               ) -> tuple[jax.Array, jax.Array]:
  """Mean region DSSIM and the DSSIM of every block, per image.

  A mean over the face lets a cloak pile its change onto the eyes, where
  people look; a cap on each block x block tile of the SSIM map (tiles at
  least half inside the region; the others read 0) bounds that.

  Args:
    a, b: [b, h, w, c] in [0, 1].
    mask: [b, h, w], 1 inside the region (same rule as `dssim`).
    block: tile side in pixels, one for all or [b] per image (data, not shape:
      a face padded into a larger canvas keeps its own tiles, `block_size` of
      its own bucket). The TILES x TILES tiles start at the top-left corner.
  Returns:
    ([b] mean DSSIM, [b, TILES, TILES] tile DSSIM); the worst block is the tiles' max.
  """
  ssim_map, m = _masked_ssim_map(a, b, mask)
  mean = jnp.sum(ssim_map * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
  n, h, w = ssim_map.shape
  block = jnp.broadcast_to(jnp.asarray(block, jnp.int32), (n,))
  d = _tile_sums((1.0 - ssim_map) / 2.0 * m, block)
  cover = _tile_sums(m, block)
  area = (block * block).astype(jnp.float32)[:, None, None]
  tiles = jnp.where(cover >= 0.5 * area, d / jnp.maximum(cover, 1.0), 0.0)
  return (1.0 - mean) / 2.0, tiles


def _tile_sums(x: jax.Array, block: jax.Array) -> jax.Array:
  """[n, h, w] -> [n, TILES, TILES] sums over each image's block x block tiles (clipped at
  the map's edge), from a summed-area table: the tile side is per image data."""
  n, h, w = x.shape
  table = jnp.pad(jnp.cumsum(jnp.cumsum(x, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
  edges = block[:, None] * jnp.arange(TILES + 1)[None, :]  # [n, TILES + 1]
  rows = jnp.take_along_axis(table, jnp.minimum(edges, h)[:, :, None], axis=1)
  corners = jnp.take_along_axis(rows, jnp.minimum(edges, w)[:, None, :], axis=2)
  return corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]


def worst_block(tiles: jax.Array) -> jax.Array:
  """[b, th, tw] tile DSSIM -> [b] the worst."""
  return jnp.max(tiles, axis=(1, 2))


def block_size(side: int) -> int:
  """The visibility tile for a region padded to `side`: an eye-sized eighth of it."""
  return max(8, side // TILES)


def soft_maximum(terms: jax.Array, weights: jax.Array, temperature: float) -> jax.Array:
  """[b, m] member terms -> [b]: T log sum_e w_e exp(r_e / T), weights summing to 1.

  Between the weighted mean (T -> inf) and the largest term (T -> 0), so the
  member that is hardest to move dominates the gradient without silencing
  the others.
  """
  return temperature * jax.nn.logsumexp(terms / temperature, axis=-1, b=weights)


def normalize(features: jax.Array) -> jax.Array:
  """L2-normalises [b, d] embeddings (models differ in scale; compare on the sphere)."""
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def squared_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """[b, d], [b, d] -> [b] squared L2 distance."""
  return jnp.sum(jnp.square(a - b), axis=-1)


def budget_excess(dssim_values: jax.Array, budget: jax.Array) -> jax.Array:
  """[b] hinge: how far each image's DSSIM is above its budget (0 when within)."""
  return jnp.maximum(dssim_values - budget, 0.0)


def update_penalty_weight(weight: jax.Array, over_budget: jax.Array, *,
                          grow: float = 1.5, shrink: float = 1.1,
                          lo: float = 1.0, hi: float = 1e6) -> jax.Array:
  """Fawkes 1.0-style per-image adaptive penalty weight.

  The weight rises while an image is over its DSSIM budget and relaxes while it
  is within, so each image settles on the budget boundary instead of every image
  sharing one hand-tuned constant.
  """
  new = jnp.where(over_budget, weight * grow, weight / shrink)
  return jnp.clip(new, lo, hi)


def to_tanh_space(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """[0, 1] pixels -> unconstrained w with x = (tanh(w) + 1) / 2."""
  return jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1.0 + eps, 1.0 - eps))


def from_tanh_space(w: jax.Array) -> jax.Array:
  return (jnp.tanh(w) + 1.0) / 2.0


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """[b, h, w, c] Gaussian blur (LowKey's smoothed copy), differentiable."""
  size = max(3, int(2 * round(3 * sigma) + 1))
  return dm_pix.gaussian_blur(x, sigma, size)


# --- A budget shaped like human vision (the "shaped" perturbation) -----------

# JFIF's RGB -> YCbCr (jpeg.py's encoder uses the same), without the chroma
# offset: here it maps pixel *changes*, which carry none.
_TO_YCC = np.array([[0.299, 0.587, 0.114],
                    [-0.168736, -0.331264, 0.5],
                    [0.5, -0.418688, -0.081312]], np.float32)
_TO_RGB = np.linalg.inv(_TO_YCC).astype(np.float32)
# Luma std (in the SSIM window) at which texture masking is full: hair, brows,
# beard and feature edges reach it, smooth skin sits near 0.01 (measured on
# LFW faces).
TEXTURE_STD = 0.05


def rgb_to_ycbcr(x: jax.Array) -> jax.Array:
  """[..., 3] RGB change -> (Y, Cb, Cr) change, JFIF weights, same units."""
  return jnp.einsum("...c,dc->...d", x, jnp.asarray(_TO_YCC), precision="highest")


def ycbcr_to_rgb(x: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_ycbcr`."""
  return jnp.einsum("...c,dc->...d", x, jnp.asarray(_TO_RGB), precision="highest")


def _blur_same(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """[b, h, w] separable filter, zero-padded to the same size (banded matmuls, as
  `separable_gaussian`)."""
  p = len(taps) // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p)))
  x = jnp.einsum("oh,bhw->bow", _band(x.shape[1], taps), x, precision="highest")
  return jnp.einsum("pw,bow->bop", _band(x.shape[2], taps), x, precision="highest")


def _masked_mean(x: jax.Array, mask: jax.Array, taps: np.ndarray) -> jax.Array:
  """Local weighted mean of x over the region's pixels only (nothing leaks in from padding)."""
  return _blur_same(x * mask, taps) / jnp.maximum(_blur_same(mask, taps), 1e-6)


def _luminance_gain(mean: jax.Array) -> jax.Array:
  """Background-luminance masking (Chou & Li 1995, Eq. 2): the visibility
  threshold of a change on an 8-bit background, relative to mid-grey's (3 levels).
  Dark and bright areas hide more."""
  bg = mean * 255.0
  t = jnp.where(bg <= 127.0, 17.0 * (1.0 - jnp.sqrt(jnp.maximum(bg, 0.0) / 127.0)) + 3.0,
                3.0 / 128.0 * (bg - 127.0) + 3.0)
  return t / 3.0


def jnd_bounds(x: jax.Array, mask: jax.Array, *, luma, chroma, masking, feather: int
               ) -> jax.Array:
  """Per-pixel bounds on a change of (Y, Cb, Cr) that people are unlikely to notice.

  A just-noticeable-difference map in the spirit of Chou & Li (1995) and Yang
  et al.'s NAMM (2005): a change hides in texture (local luma std, full at
  `TEXTURE_STD`) and in dark or bright surroundings; the larger of the two
  raises the flat mid-grey bound, up to `masking` times. Chroma gets the same
  shape at its own, much tighter, base: colour casts are what people see.
  Bounds shrink where a change that large could leave [0, 1] (so no pixel is
  ever clipped, and clipping never turns a luma change into a colour cast) and
  fade to 0 over `feather` pixels inside the region's edge (a smooth change
  must not end in a visible step there).

  Args:
    x: [b, h, w, 3] original pixels in [0, 1].
    mask: [b, h, w], 1 inside the region.
    luma, chroma: bounds on flat mid-grey, in [0, 1] units (scalars).
    masking: the most texture and luminance raise them (>= 1).
    feather: the fade's width in pixels.
  Returns:
    [b, h, w, 3] bounds on |change| of Y, Cb, Cr; 0 outside the region.
  """
  taps = _gaussian_taps()
  y = rgb_to_ycbcr(x)[..., 0]
  mean = _masked_mean(y, mask, taps)
  std = jnp.sqrt(jnp.maximum(_masked_mean(y * y, mask, taps) - mean * mean, 0.0))
  texture = 1.0 + (masking - 1.0) * jnp.clip(std / TEXTURE_STD, 0.0, 1.0)
  gain = jnp.clip(jnp.maximum(texture, _luminance_gain(mean)), 1.0, masking)
  gain = _masked_mean(gain, mask, taps)  # the bound itself should not be speckled
  bounds = gain[..., None] * jnp.stack([luma, chroma, chroma]).astype(jnp.float32)
  excursion = jnp.einsum("...k,ck->...c", bounds, jnp.abs(jnp.asarray(_TO_RGB)),
                         precision="highest")  # the most each RGB channel can move
  headroom = jnp.minimum(x, 1.0 - x)
  fit = jnp.min(jnp.clip(headroom / jnp.maximum(excursion, 1e-12), 0.0, 1.0), axis=-1)
  box = np.full(2 * feather + 1, 1.0 / (2 * feather + 1), np.float32)
  fade = jnp.clip(2.0 * _blur_same(mask, box) - 1.0, 0.0, 1.0) * mask
  return bounds * (fit * fade)[..., None]
