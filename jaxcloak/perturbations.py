"""What a cloak search changes: the map from its search variable to a face region's pixels.

- `pixel_noise`: every pixel free (fine coloured speckle).
- `shaped_noise`: a field at 1/`smooth_factor` of the region's side, upsampled
  (a low-frequency change) and mapped to a change of luma and chroma bounded
  per pixel by a just-noticeable-difference map of the original, delta = jnd *
  tanh(u) (`losses.jnd_bounds`): texture and dark or bright surroundings hide
  more, flat skin and colour less.
- `person_noise`: one shaped field per person, in a canonical face frame,
  carried onto each photo through the inverse of its alignment.

Each takes the loop's batch and knobs (`optimize.Batch`, `optimize.Knobs`) and
returns the first iterate and the iterate -> pixels map; `restrict` then holds
the per-pixel cap and the region mask.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import losses
from jaxcloak.config import CloakConfig
from jaxcloak.faces.align import CANONICAL_SIDE, invert_affine, warp_affine

# What the loop searches over: (batch, knobs) -> (w0, pixels), the first
# iterate and the map from an iterate to the region's pixels (before the
# per-pixel cap and the mask).
Parametrisation = Callable[..., tuple[jax.Array, Callable[[jax.Array], jax.Array]]]

# Scales the shaped field u so that a learning rate moves the upsampled tanh
# argument by 10x as much: Adam's steps are ~lr in u, and at the default lr the
# bound is then reached in ~20 steps, as pixel mode's speckle is.
SHAPED_GAIN = 10.0


def pixel_noise(batch, knobs):
  """Every pixel free, in tanh space: x = (tanh(w) + 1) / 2 (Carlini & Wagner 2017)."""
  del knobs
  w0 = losses.to_tanh_space(batch.patches if batch.starts is None else batch.starts)
  return w0, losses.from_tanh_space


def shaped_noise(smooth_factor: int) -> Parametrisation:
  """A low-frequency luma/chroma change under a just-noticeable-difference bound.

  w is a [b, s/f, s/f, 3] field (f = smooth_factor) in (Y, Cb, Cr); the change is
  delta = jnd * tanh(z0 + upsample(w)), jnd the per-pixel bounds of the original
  (`losses.jnd_bounds`), so every pixel's luma and chroma change stays within
  its bound whatever the search does. A start (a refine round's written pixels)
  enters as z0, its change in the same coordinates, so the search resumes from it
  with w = 0 and its change is bounded against the original too.
  """
  def parametrise(batch, knobs):
    orig = batch.patches
    b, s = orig.shape[0], orig.shape[1]
    jnd = losses.jnd_bounds(orig, batch.masks, luma=knobs.jnd_luma, chroma=knobs.jnd_chroma,
                            masking=knobs.jnd_masking, feather=2 * smooth_factor)
    z0 = 0.0
    if batch.starts is not None:
      # Kept off tanh's flat tails: a start at its bound would freeze those pixels.
      ratio = losses.rgb_to_ycbcr(batch.starts - orig) / jnp.maximum(jnd, 1e-12)
      z0 = jnp.arctanh(jnp.clip(ratio, -0.95, 0.95))
    low = -(-s // smooth_factor)

    def pixels(w):
      z = jax.image.resize(SHAPED_GAIN * w, (b, s, s, 3), "cubic") + z0
      return jnp.clip(orig + losses.ycbcr_to_rgb(jnd * jnp.tanh(z)), 0.0, 1.0)

    return jnp.zeros((b, low, low, 3), jnp.float32), pixels

  return parametrise


def canonical_window(side: int, fade: int = 16) -> np.ndarray:
  """[side, side] 1 inside the canonical frame, falling to 0 over `fade` pixels at its
  edge: a person's change must end smoothly where the frame ends on a photo."""
  ramp = np.clip((np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5) / fade, 0.0, 1.0)
  return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def person_noise(smooth_factor: int) -> Parametrisation:
  """One person's shaped change, shared by all their photos (scope="person").

  w is a [b, C/f, C/f, 3] field in (Y, Cb, Cr) on the canonical face frame
  (`align.CANONICAL_SIDE` C; items of one person hold equal copies, kept equal
  by the loop). Each photo receives it through the inverse of its own
  alignment (region.canonical), then scaled by that photo's just-noticeable-
  difference bounds, as in `shaped_noise`: delta = jnd * tanh(warp(upsample(w))).
  """
  window = canonical_window(CANONICAL_SIDE)

  def parametrise(batch, knobs):
    orig = batch.patches
    b, s = orig.shape[0], orig.shape[1]
    jnd = losses.jnd_bounds(orig, batch.masks, luma=knobs.jnd_luma, chroma=knobs.jnd_chroma,
                            masking=knobs.jnd_masking, feather=2 * smooth_factor)
    to_patch = jax.vmap(invert_affine)(batch.canonical)
    low = -(-CANONICAL_SIDE // smooth_factor)

    def pixels(w):
      z = jax.image.resize(SHAPED_GAIN * w, (b, CANONICAL_SIDE, CANONICAL_SIDE, 3), "cubic")
      z = jax.vmap(warp_affine, in_axes=(0, 0, None))(z * window[..., None], to_patch, s)
      return jnp.clip(orig + losses.ycbcr_to_rgb(jnd * jnp.tanh(z)), 0.0, 1.0)

    return jnp.zeros((b, low, low, 3), jnp.float32), pixels

  return parametrise


def for_config(config: CloakConfig) -> Parametrisation:
  """The search variable a config asks for."""
  if config.scope == "person":
    return person_noise(config.smooth_factor)
  return pixel_noise if config.perturbation == "pixels" else shaped_noise(config.smooth_factor)


def restrict(x, orig, mask, max_change):
  """An iterate's pixels as written: within the per-pixel cap, and only inside the mask."""
  if max_change is not None:  # per-pixel cap on what people can see
    x = orig + jnp.clip(x - orig, -max_change, max_change)
  return x * mask + orig * (1.0 - mask)
