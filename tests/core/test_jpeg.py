"""The differentiable JPEG round trip against libjpeg (through PIL) on real photos."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from jaxcloak import jpeg
from tests.conftest import FACES


def _psnr(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def _photo():
  path = sorted(FACES.glob("*/*.jpg"))[5]
  im = Image.open(path)
  return im, np.asarray(im.convert("RGB"))[:240, :240]


def _libjpeg(rgb, **kwargs):
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="JPEG", **kwargs)
  return np.asarray(Image.open(buf).convert("RGB"))


def _simulated(rgb, qtables, subsampling):
  luma, chroma, code, on = jpeg.spec_arrays(qtables, subsampling)
  assert on
  out = jpeg.round_trip(jnp.asarray(rgb / 255.0, jnp.float32), luma, chroma, jnp.int32(code))
  return np.asarray(out) * 255.0


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("quality", [None, 95, 50])
def test_round_trip_matches_libjpeg(quality, subsampling):
  im, rgb = _photo()
  # A cloak-sized perturbation, the kind of detail the encoder removes.
  noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
  if quality is None:  # the photo's own tables (LFW: quality 75)
    qtables = im.quantization
    real = _libjpeg(noisy, qtables=qtables, subsampling=subsampling)
  else:
    luma, chroma, _ = jpeg.tables_for_quality(quality)
    qtables = {0: luma.astype(int).ravel().tolist(), 1: chroma.astype(int).ravel().tolist()}
    real = _libjpeg(noisy, quality=quality, subsampling=subsampling)
  sim = _simulated(noisy, qtables, subsampling)
  # The simulation is far closer to libjpeg's output than the input is.
  assert _psnr(sim, real) > 42.0
  assert _psnr(sim, real) > _psnr(noisy, real) + 5.0


def test_tables_for_quality_are_pils():
  im, _ = _photo()
  luma, chroma, sub = jpeg.tables_for_quality(75)  # LFW was written at quality 75, 4:2:0
  np.testing.assert_array_equal(luma.ravel(), im.quantization[0])
  np.testing.assert_array_equal(chroma.ravel(), im.quantization[1])
  assert sub == JpegImagePlugin.get_sampling(im) == 2


def test_gradient_passes_straight_through():
  _, rgb = _photo()
  x = jnp.asarray(0.25 + 0.5 * rgb[:64, :64] / 255.0, jnp.float32)  # mid-tones: no clipping
  luma, chroma, _, _ = jpeg.spec_arrays(Image.open(sorted(FACES.glob("*/*.jpg"))[0]).quantization, 2)
  g = jax.grad(lambda z: jnp.sum(jpeg.round_trip(z, luma, chroma, jnp.int32(2))))(x)
  assert np.all(np.isfinite(np.asarray(g)))
  # Straight-through rounding: d(sum of the decode)/dx sums to about one per pixel channel.
  assert abs(float(jnp.mean(g)) - 1.0) < 0.05


def test_apply_leaves_items_that_are_not_jpeg_alone():
  _, rgb = _photo()
  x = jnp.asarray(np.stack([rgb[:64, :64], rgb[64:128, :64]]) / 255.0, jnp.float32)
  qt = Image.open(sorted(FACES.glob("*/*.jpg"))[0]).quantization
  on = jpeg.spec_arrays(qt, 2)
  off = jpeg.spec_arrays(None, None)
  spec = jpeg.JpegSpec(np.stack([on[0], off[0]]), np.stack([on[1], off[1]]),
                       np.array([on[2], off[2]], np.int32), np.array([on[3], off[3]]))
  y = np.asarray(jpeg.apply(x, spec))
  np.testing.assert_array_equal(y[1], np.asarray(x[1]))
  assert np.abs(y[0] - np.asarray(x[0])).max() > 1e-3
