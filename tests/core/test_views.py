"""Random views for expectation over transformations: against references on real faces."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcloak import jpeg, views


def _faces(faces_dir, n=4, size=112):
  files = sorted(faces_dir.glob("*/1.jpg"))[:n]
  return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size)), np.float32) / 255
                   for f in files])


def test_quality_tables_match_the_encoder():
  q = jnp.array([10.0, 40.0, 75.0, 95.0])
  luma, chroma = views._quality_tables(q)
  for i, quality in enumerate((10, 40, 75, 95)):
    ref_luma, ref_chroma, _ = jpeg.tables_for_quality(quality)
    np.testing.assert_array_equal(luma[i], ref_luma)
    np.testing.assert_array_equal(chroma[i], ref_chroma)


def test_jpeg_view_is_close_to_libjpeg(faces_dir):
  x = _faces(faces_dir, size=150)  # not a multiple of 16: padded inside
  out = np.asarray(views._jpeg(jnp.asarray(x), jnp.full((4,), 60.0)))
  for a, b in zip(x, out):
    buf = io.BytesIO()
    Image.fromarray(np.round(a * 255).astype(np.uint8)).save(buf, "JPEG", quality=60)
    ref = np.asarray(Image.open(buf), np.float32) / 255
    psnr = -10 * np.log10(np.mean((b - ref) ** 2))
    assert psnr > 38, psnr


def test_blur_sigma_zero_is_identity_and_blur_smooths(faces_dir):
  x = jnp.asarray(_faces(faces_dir))
  same = views._blur(x, jnp.zeros(4))
  np.testing.assert_allclose(same, x, atol=1e-5)
  blurred = np.asarray(views._blur(x, jnp.full((4,), 2.0)))
  tv = lambda im: np.abs(np.diff(im, axis=1)).mean()
  assert tv(blurred) < 0.6 * tv(np.asarray(x))


def test_views_are_keyed_in_range_and_mix_kinds(faces_dir):
  x = jnp.asarray(_faces(faces_dir))
  a = views.apply_pixel_views(jax.random.key(0), x, views.KINDS)
  b = views.apply_pixel_views(jax.random.key(0), x, views.KINDS)
  c = views.apply_pixel_views(jax.random.key(1), x, views.KINDS)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(a.min()) >= 0 and float(a.max()) <= 1
  assert np.allclose(views.apply_pixel_views(jax.random.key(0), x, ()), x)


def test_jitter_stays_within_its_ranges():
  m = jnp.tile(jnp.array([[2.0, 0.0, -10.0], [0.0, 2.0, -20.0]]), (256, 1, 1))
  j = np.asarray(views.jitter_affines(jax.random.key(0), m, 112))
  linear = j[:, :, :2] @ np.linalg.inv(np.asarray(m[0, :, :2]))
  scale = np.sqrt(np.abs(np.linalg.det(linear)))
  angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
  assert scale.min() >= 0.9 - 1e-5 and scale.max() <= 1.1 + 1e-5
  assert np.abs(angle).max() <= 10 + 1e-4
  unchanged = np.all(np.isclose(j, np.asarray(m)), axis=(1, 2))
  assert 0.3 < unchanged.mean() < 0.7  # each item jittered with probability 1/2
  # The crop centre moves by at most the shift (rotation and scale are about it).
  c = np.array([55.5, 55.5, 1.0])
  src = np.linalg.solve(np.vstack([np.asarray(m[0]), [0, 0, 1]]), c)
  assert np.abs(j @ src - c[:2]).max() <= 0.05 * 112 + 1e-3
