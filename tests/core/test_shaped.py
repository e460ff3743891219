"""The "shaped" perturbation: a smooth luma/chroma change under a just-noticeable-difference
bound, on the tiny model; and that the default ("pixels") path is today's."""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import flags, losses
from jaxcloak.config import CloakConfig
from jaxcloak.optimize import Knobs, make_cloak_fn, program_config
from jaxcloak.perturbations import pixel_noise
from tests.core.tiny import tiny_batch, tiny_extractor

BUDGET = 0.01


def _config(**kw):
  base = dict(extractors=("tiny",), budget=BUDGET, steps=30, learning_rate=0.01)
  return CloakConfig(**{**base, **kw})


@functools.cache
def _fn(perturbation: str, smooth_factor: int = CloakConfig.smooth_factor):
  # One compile per setting for the whole module: batches below share its shapes
  # (starts always given, as the pipeline does).
  return make_cloak_fn([tiny_extractor()], _config(perturbation=perturbation,
                                                   smooth_factor=smooth_factor))


def _batch(**kw):
  batch = tiny_batch()
  return batch._replace(starts=batch.patches.copy(), **kw)


def _jnd(batch, config):
  return np.asarray(losses.jnd_bounds(jnp.asarray(batch.patches), jnp.asarray(batch.masks),
                                      luma=config.jnd_luma, chroma=config.jnd_chroma,
                                      masking=config.jnd_masking, feather=2 * config.smooth_factor))


def _high_frequency(delta):
  """Mean |4-neighbour Laplacian| of a [b, h, w, 3] change: its fine-grain energy."""
  d = np.asarray(delta)
  lap = (4 * d[:, 1:-1, 1:-1] - d[:, :-2, 1:-1] - d[:, 2:, 1:-1] - d[:, 1:-1, :-2]
         - d[:, 1:-1, 2:])
  return float(np.abs(lap).mean())


def test_default_is_todays_pixel_search():
  assert CloakConfig().perturbation == "pixels"
  batch = _batch()
  # The parametrisation is exactly the old one: w0 = atanh(2 start - 1), x = (tanh(w) + 1) / 2 ...
  w0, pixels = pixel_noise(batch, Knobs.of(_config()))
  np.testing.assert_array_equal(np.asarray(w0), np.asarray(losses.to_tanh_space(batch.starts)))
  assert pixels is losses.from_tanh_space
  # ... and the jnd knobs, which it never reads, change nothing.
  fn = _fn("pixels")
  a = fn(batch)
  fn.knobs = fn.knobs._replace(jnd_luma=np.float32(0.1), jnd_chroma=np.float32(0.1))
  b = fn(batch)
  fn.knobs = Knobs.of(_config())
  np.testing.assert_array_equal(np.asarray(a.cloaked), np.asarray(b.cloaked))


def test_jnd_bounds_follow_texture_luminance_and_edges():
  s = 64
  flat = np.full((1, s, s, 3), 127 / 255, np.float32)  # Chou & Li's least-masking grey
  rng = np.random.default_rng(0)
  textured = flat + rng.choice([-0.1, 0.1], size=(1, s, s, 1)).astype(np.float32)
  near_white = np.full((1, s, s, 3), 1.0 - 1 / 255, np.float32)
  x = np.concatenate([flat, textured, near_white])
  mask = np.ones((3, s, s), np.float32)
  mask[:, :, 48:] = 0.0
  b = np.asarray(losses.jnd_bounds(jnp.asarray(x), jnp.asarray(mask), luma=0.01, chroma=0.002,
                                   masking=3.0, feather=8))
  inner = (slice(16, 32), slice(16, 32))
  # Flat mid-grey: exactly the base bounds; texture: up to `masking` times them.
  np.testing.assert_allclose(b[0][inner], np.broadcast_to([0.01, 0.002, 0.002], (16, 16, 3)),
                             rtol=1e-5)
  np.testing.assert_allclose(b[1][inner], np.broadcast_to([0.03, 0.006, 0.006], (16, 16, 3)),
                             rtol=1e-5)
  # Nothing outside the region, a fade toward its edge.
  assert np.all(b[:, :, 48:] == 0) and b[0, 20, 47, 0] < b[0, 20, 44, 0] < b[0, 20, 30, 0]
  # No bound that a pixel could only take by leaving [0, 1].
  rgb_span = np.einsum("...k,ck->...c", b, np.abs(losses._TO_RGB))
  assert np.all(x[2] + rgb_span[2] <= 1.0 + 1e-6) and b[2].max() > 0
  np.testing.assert_allclose(np.asarray(losses.ycbcr_to_rgb(losses.rgb_to_ycbcr(jnp.asarray(x)))),
                             x, atol=1e-6)


# The most fine-grain energy a shaped change may have, as a share of the pixel
# search's (measured on this batch: 0.34 at factor 2, 0.12 at 4).
@pytest.mark.parametrize("factor,most", [(2, 0.5), (4, 0.2)])
def test_shaped_stays_within_the_jnd_map_and_is_smooth(factor, most):
  batch = _batch()
  cfg = _config(perturbation="shaped", smooth_factor=factor)
  shaped, pixels = _fn("shaped", factor)(batch), _fn("pixels")(batch)
  for res in (shaped, pixels):
    assert np.all(np.asarray(res.found)) and np.all(np.asarray(res.dssim) <= BUDGET + 1e-6)
  delta = np.asarray(shaped.cloaked) - batch.patches
  change = np.abs(np.asarray(losses.rgb_to_ycbcr(jnp.asarray(delta))))
  jnd = _jnd(batch, cfg)
  # Luma and chroma each within their own bound, and the cloak uses them.
  for c in range(3):
    assert np.all(change[..., c] <= jnd[..., c] + 1e-6), c
  assert np.mean(change[..., 0] > 0.5 * jnd[..., 0]) > 0.2
  # Low-frequency: far less fine-grain energy than the pixel search's speckle,
  # at a similar DSSIM.
  ratio = np.asarray(shaped.dssim).mean() / np.asarray(pixels.dssim).mean()
  assert 0.5 < ratio < 2.0, ratio
  fine = _high_frequency(delta) / _high_frequency(np.asarray(pixels.cloaked) - batch.patches)
  assert fine < most, fine


def test_shaped_moves_toward_the_target():
  res = _fn("shaped")(_batch())
  assert np.all(np.asarray(res.found))
  assert np.all(np.asarray(res.final_distance) < 0.9 * np.asarray(res.start_distance))


def test_shaped_starts_masks_and_knobs_reuse_the_program():
  fn = _fn("shaped")
  batch = _batch()
  fn(batch)
  traces = len(fn.traces)
  # A refine round's start (here: noise beyond the bounds) and a partial mask:
  # the change stays bounded against the original and inside the mask.
  masks = np.array(batch.masks)
  masks[:, :, 40:] = 0.0
  rng = np.random.default_rng(1)
  starts = np.clip(batch.patches + rng.normal(0, 0.02, batch.patches.shape), 0, 1)
  res = fn(batch._replace(masks=masks, starts=starts.astype(np.float32)))
  cfg = _config(perturbation="shaped")
  jnd = _jnd(batch._replace(masks=masks), cfg)
  delta = np.asarray(res.cloaked) - batch.patches
  assert np.all(np.abs(np.asarray(losses.rgb_to_ycbcr(jnp.asarray(delta)))) <= jnd + 1e-6)
  np.testing.assert_array_equal(np.asarray(res.cloaked)[:, :, 40:], batch.patches[:, :, 40:])
  # Steps, seed and the jnd bounds are data: no new program, and the bounds move.
  fn.knobs = fn.knobs._replace(steps=np.int32(10), seed=np.int32(4),
                               jnd_luma=np.float32(0.006), jnd_chroma=np.float32(0.002))
  try:
    res = fn(batch)
  finally:
    fn.knobs = Knobs.of(cfg)
  assert len(fn.traces) == traces
  assert int(np.max(np.asarray(res.steps))) == 10
  jnd = _jnd(batch, dataclasses.replace(cfg, jnd_luma=0.006, jnd_chroma=0.002))
  delta = np.asarray(res.cloaked) - batch.patches
  assert np.all(np.abs(np.asarray(losses.rgb_to_ycbcr(jnp.asarray(delta)))) <= jnd + 1e-6)


def test_fields_are_flags_and_the_right_ones_are_data():
  import argparse
  parser = argparse.ArgumentParser()
  flags.add_cloak_flags(parser)
  args = parser.parse_args(["--perturbation", "shaped", "--smooth-factor", "8",
                            "--jnd-luma", "0.02", "--jnd-chroma", "0.003", "--jnd-masking", "2"])
  cfg = flags.config_from_flags(args)
  assert (cfg.perturbation, cfg.smooth_factor, cfg.jnd_luma, cfg.jnd_chroma, cfg.jnd_masking) \
      == ("shaped", 8, 0.02, 0.003, 2.0)
  # The bounds are knobs of the compiled loop; the parametrisation is its shape.
  assert program_config(cfg) == program_config(dataclasses.replace(cfg, jnd_luma=0.01,
                                                                   jnd_masking=3.0))
  assert program_config(cfg) != program_config(dataclasses.replace(cfg, smooth_factor=4))
  assert program_config(cfg) != program_config(dataclasses.replace(cfg, perturbation="pixels"))
  for bad in (dict(perturbation="dct"), dict(smooth_factor=0), dict(jnd_luma=0.0),
              dict(jnd_masking=0.5)):
    with pytest.raises(ValueError):
      CloakConfig(**bad)
