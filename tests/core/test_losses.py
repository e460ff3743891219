"""Loss pieces against independent references on real photos."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from jaxcloak import losses


def _real_pair(faces_dir, seed=0):
  files = sorted(faces_dir.glob("*/1.jpg"))[:4]
  imgs = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) / 255 for f in files])
  noisy = np.clip(imgs + np.random.default_rng(seed).normal(0, 0.02, imgs.shape), 0, 1)
  return imgs, noisy.astype(np.float32)


def test_dssim_matches_scikit_image(faces_dir):
  a, b = _real_pair(faces_dir)
  ours = np.asarray(losses.dssim(jnp.asarray(a), jnp.asarray(b)))
  ref = []
  for x, y in zip(a, b):
    s = structural_similarity(x, y, channel_axis=2, data_range=1.0, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False)
    ref.append((1 - s) / 2)
  np.testing.assert_allclose(ours, ref, atol=2e-4)
  assert (ours > 0).all() and (ours < 1).all()


def test_dssim_identical_is_zero_and_bounded(faces_dir):
  a, _ = _real_pair(faces_dir)
  assert np.allclose(losses.dssim(jnp.asarray(a), jnp.asarray(a)), 0.0, atol=1e-6)
  inv = 1.0 - a
  d = np.asarray(losses.dssim(jnp.asarray(a), jnp.asarray(inv)))
  assert ((d >= 0) & (d <= 1)).all()


def test_masked_dssim_ignores_padding(faces_dir):
  a, b = _real_pair(faces_dir)
  a, b = a[:, :128, :128], b[:, :128, :128]
  pa = np.zeros((4, 192, 192, 3), np.float32)
  pb = np.zeros_like(pa)
  pa[:, :128, :128], pb[:, :128, :128] = a, b
  mask = np.zeros((4, 192, 192), np.float32)
  mask[:, :128, :128] = 1
  padded = np.asarray(losses.dssim(jnp.asarray(pa), jnp.asarray(pb), jnp.asarray(mask)))
  plain = np.asarray(losses.dssim(jnp.asarray(a), jnp.asarray(b)))
  unmasked = np.asarray(losses.dssim(jnp.asarray(pa), jnp.asarray(pb)))
  # Masking recovers the region's own DSSIM; averaging over padding would halve it.
  np.testing.assert_allclose(padded, plain, rtol=0.08)
  assert (unmasked < 0.7 * plain).all()


def test_gradients_finite_on_flat_images():
  flat = jnp.full((2, 32, 32, 3), 0.5)
  g = jax.grad(lambda x: losses.dssim(x, flat).sum())(flat + 1e-3)
  assert jnp.isfinite(g).all()
  w = losses.to_tanh_space(jnp.zeros((1, 8, 8, 3)))
  assert jnp.isfinite(jax.grad(lambda w: losses.from_tanh_space(w).sum())(w)).all()


def test_tanh_round_trip_stays_in_range():
  x = jnp.linspace(0, 1, 101)
  y = losses.from_tanh_space(losses.to_tanh_space(x))
  assert float(jnp.abs(x - y).max()) < 1e-5
  assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_penalty_weight_adapts_per_image():
  w = jnp.array([10.0, 10.0])
  new = losses.update_penalty_weight(w, jnp.array([True, False]))
  assert new[0] > 10.0 > new[1]
  assert float(losses.budget_excess(jnp.array([0.01]), jnp.array([0.02]))[0]) == 0.0


def test_fast_ssim_filter_equals_dm_pix_default(faces_dir):
  import dm_pix
  a, b = _real_pair(faces_dir, seed=1)
  a, b = jnp.asarray(a[:, :150, :130]), jnp.asarray(b[:, :150, :130])
  np.testing.assert_allclose(losses.ssim(a, b), dm_pix.ssim(a, b), atol=1e-5)
  ga = jax.grad(lambda x: losses.ssim(x, b).sum())(a)
  gb = jax.grad(lambda x: dm_pix.ssim(x, b).sum())(a)
  # SSIM's variance terms (E[x^2] - mu^2) cancel in float32, so gradients agree
  # in norm, not element by element.
  assert float(jnp.linalg.norm(ga - gb) / jnp.linalg.norm(gb)) < 3e-2


def test_visibility_mean_equals_dssim_and_worst_block_finds_a_local_change(faces_dir):
  a, _ = _real_pair(faces_dir)
  a = a[:, :192, :192]
  spread = np.clip(a + np.random.default_rng(1).normal(0, 0.01, a.shape), 0, 1).astype(np.float32)
  local = a.copy()  # the same kind of change piled onto one eye-sized patch
  local[:, 60:84, 60:84] = np.clip(local[:, 60:84, 60:84] + np.random.default_rng(2).normal(
      0, 0.08, (4, 24, 24, 3)), 0, 1)
  mask = jnp.ones((4, 192, 192))
  block = losses.block_size(192)
  for b in (spread, local):
    mean, tiles = losses.visibility(jnp.asarray(a), jnp.asarray(b), mask, block)
    worst = losses.worst_block(tiles)
    np.testing.assert_allclose(mean, losses.dssim(jnp.asarray(a), jnp.asarray(b), mask), atol=1e-6)
    assert (np.asarray(worst) >= np.asarray(mean)).all()
  def figures(b):
    mean, tiles = losses.visibility(jnp.asarray(a), jnp.asarray(b), mask, block)
    return np.asarray(mean), np.asarray(losses.worst_block(tiles))
  m_spread, w_spread = figures(spread)
  m_local, w_local = figures(local)
  # A mean cannot tell the two apart as well as the worst block does.
  assert (w_local / m_local > 3 * w_spread / m_spread).all()


def test_soft_maximum_lies_between_weighted_mean_and_max():
  terms = jnp.array([[0.2, 0.9, 0.5], [0.5, 0.5, 0.5]])
  w = jnp.array([0.5, 0.25, 0.25])
  mean = np.asarray(terms @ w)
  for t in (0.02, 0.1, 1.0):
    s = np.asarray(losses.soft_maximum(terms, w, t))
    assert (s >= mean - 1e-6).all() and (s <= terms.max(axis=1) + 1e-6).all()
  np.testing.assert_allclose(losses.soft_maximum(terms, w, 1e-3)[0], 0.9, atol=2e-3)
  np.testing.assert_allclose(losses.soft_maximum(terms, w, 0.05)[1], 0.5, atol=1e-6)
  np.testing.assert_allclose(losses.soft_maximum(terms, w, 1e3), mean, atol=1e-3)


def test_one_masking_rule_loop_and_file(faces_dir):
  """The loop's masked DSSIM of a padded patch, the written-file check and dm_pix's SSIM of
  the bare crop are one number (one rule: windows wholly inside the region)."""
  from jaxcloak.faces import regions
  a, b = _real_pair(faces_dir)
  h, w = 117, 101  # not a multiple of anything
  ua = np.round(a[0] * 255).astype(np.uint8)
  ub = np.round(b[0] * 255).astype(np.uint8)
  crop_a, crop_b = ua[:h, :w] / np.float32(255), ub[:h, :w] / np.float32(255)
  plain = float(losses.dssim(jnp.asarray(crop_a[None]), jnp.asarray(crop_b[None]))[0])
  pa, pb = np.zeros((1, 160, 160, 3), np.float32), np.zeros((1, 160, 160, 3), np.float32)
  pa[0, :h, :w], pb[0, :h, :w] = crop_a, crop_b
  mask = np.zeros((1, 160, 160), np.float32)
  mask[0, :h, :w] = 1
  loop = float(losses.dssim(jnp.asarray(pa), jnp.asarray(pb), jnp.asarray(mask))[0])
  on_file = regions.region_dssim(ua, ub, (0, 0, w, h))
  assert plain > 0.01
  np.testing.assert_allclose([loop, on_file], plain, rtol=1e-4)
