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


def visibility(a: jax.Array, b: jax.Array, mask: jax.Array, block: int
               ) -> tuple[jax.Array, jax.Array]:
  """Mean region DSSIM and the DSSIM of every block, per image.

  A mean over the face lets a cloak pile its change onto the eyes, where
  people look; a cap on each block x block tile of the SSIM map (tiles at
  least half inside the region; the others read 0) bounds that.

  Args:
    a, b: [b, h, w, c] in [0, 1].
    mask: [b, h, w], 1 inside the region (same rule as `dssim`).
    block: tile side in pixels.
  Returns:
    ([b] mean DSSIM, [b, th, tw] tile DSSIM); the worst block is the tiles' max.
  """
  ssim_map, m = _masked_ssim_map(a, b, mask)
  mean = jnp.sum(ssim_map * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
  n, h, w = ssim_map.shape
  th, tw = -(-h // block), -(-w // block)
  pad = ((0, 0), (0, th * block - h), (0, tw * block - w))
  d = jnp.pad((1.0 - ssim_map) / 2.0 * m, pad).reshape(n, th, block, tw, block)
  cover = jnp.pad(m, pad).reshape(n, th, block, tw, block)
  d, cover = jnp.sum(d, axis=(2, 4)), jnp.sum(cover, axis=(2, 4))
  tiles = jnp.where(cover >= 0.5 * block * block, d / jnp.maximum(cover, 1.0), 0.0)
  return (1.0 - mean) / 2.0, tiles


def worst_block(tiles: jax.Array) -> jax.Array:
  """[b, th, tw] tile DSSIM -> [b] the worst."""
  return jnp.max(tiles, axis=(1, 2))


def block_size(side: int) -> int:
  """The visibility tile for a region padded to `side`: an eye-sized eighth of it."""
  return max(8, side // 8)


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
