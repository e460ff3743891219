"""Similarity alignment: insightface's norm_crop on real faces, gradients, identity, batching."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcloak import weights
from jaxcloak.faces import align, detect
from jaxcloak.models import yunet


@pytest.fixture(scope="module")
def faces(faces_dir):
  """8 real photos (one per identity) with YuNet landmarks of the central face."""
  try:
    params = yunet.load().params
  except weights.WeightsError:
    weights.fetch_one("yunet", yunet.SOURCE, yunet.convert,
                      weights_dir=weights.default_weights_dir(),
                      cache_dir=weights.default_cache_dir())
    params = yunet.load().params
  identities = sorted(p for p in faces_dir.iterdir() if p.is_dir())[4::5][:8]
  files = [sorted(p.glob("*.jpg"), key=lambda f: int(f.stem))[2] for p in identities]
  photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
  dets = detect.Detector(params, max_side=None)(photos)
  landmarks = []
  for d in dets:
    i = d.nearest((125, 125), 40)
    assert i is not None
    landmarks.append(d.landmarks[i])
  return np.stack(photos), np.stack(landmarks)


@pytest.mark.must_run  # the only check of alignment against insightface
def test_matches_insightface_norm_crop(faces):
  face_align = pytest.importorskip("insightface.utils.face_align")
  photos, landmarks = faces
  images = jnp.asarray(photos, jnp.float32) / 255.0
  crops = np.asarray(jax.jit(align.align, static_argnums=3)(
      images, jnp.asarray(landmarks), align.ARCFACE_TEMPLATE, 112)) * 255.0
  ms_jnp = jax.vmap(align.similarity_transform_jnp, in_axes=(0, None))(
      jnp.asarray(landmarks), align.ARCFACE_TEMPLATE)
  diffs = []
  with warnings.catch_warnings():
    # skimage 0.26 deprecates the estimate() that insightface calls.
    warnings.simplefilter("ignore", FutureWarning)
    for photo, lm, crop, m_jnp in zip(photos, landmarks, crops, np.asarray(ms_jnp)):
      ref_m = face_align.estimate_norm(lm, 112)
      np.testing.assert_allclose(align.similarity_transform(lm, align.ARCFACE_TEMPLATE), ref_m,
                                 atol=1e-4)
      np.testing.assert_allclose(m_jnp, ref_m, atol=1e-4)
      ref = face_align.norm_crop(photo, lm, 112).astype(np.float64)
      diffs.append(np.abs(np.round(crop) - ref))
  diffs = np.stack(diffs)
  # cv2.warpAffine quantises positions to 1/32 px and weights to 15 bits; on
  # these faces the rounded crops measured max 1, mean 5e-5 (0-255 units).
  # The bound leaves room for other OpenCV builds' interpolation paths.
  assert diffs.mean() < 0.5 and diffs.max() <= 4, (diffs.mean(), diffs.max())


def test_recovers_a_known_similarity():
  rng = np.random.default_rng(1)
  src = rng.uniform(0, 200, (5, 2))
  angle, scale, t = 0.3, 0.7, np.array([12.0, -40.0])
  rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  dst = src @ rot.T + t
  want = np.concatenate([rot, t[:, None]], 1)
  np.testing.assert_allclose(align.similarity_transform(src, dst), want, atol=1e-9)
  np.testing.assert_allclose(align.similarity_transform_jnp(src, dst), want, atol=1e-4)
  skimage = pytest.importorskip("skimage.transform")
  noisy = dst + rng.normal(0, 2.0, dst.shape)
  ref = skimage.SimilarityTransform()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    ref.estimate(src, noisy)
  np.testing.assert_allclose(align.similarity_transform(src, noisy), ref.params[:2], atol=1e-9)


def test_identity_returns_the_image():
  image = jax.random.uniform(jax.random.key(0), (24, 24, 3))
  eye = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  np.testing.assert_allclose(align.warp_affine(image, eye, 24), image, atol=1e-6)
  # An integer shift moves pixels and fills zeros, as cv2.BORDER_CONSTANT.
  shifted = align.warp_affine(image, jnp.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]]), (24, 24))
  np.testing.assert_allclose(shifted[:22, 3:], image[2:, :21], atol=1e-6)
  assert np.all(np.asarray(shifted[:, :3]) == 0) and np.all(np.asarray(shifted[22:]) == 0)


def test_gradient_flows_only_from_the_crop_support(faces):
  photos, landmarks = faces
  image = jnp.asarray(photos[0], jnp.float32) / 255.0
  m = align.similarity_transform_jnp(landmarks[0], align.ARCFACE_TEMPLATE)
  g = np.asarray(jax.jit(jax.grad(lambda x: align.warp_affine(x, m, 112).sum()))(image))
  assert np.isfinite(g).all() and np.abs(g).max() > 0
  # Image pixels that map more than one pixel outside the crop are never read.
  ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
  m = np.asarray(m, np.float64)
  u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
  v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
  far = (u < -1.5) | (u > 112.5) | (v < -1.5) | (v > 112.5)
  near = (u > 1) & (u < 110) & (v > 1) & (v < 110)
  assert far.any() and np.all(g[far] == 0)
  assert np.all(np.abs(g[near]).sum(-1) > 0)


def test_align_batches_warp_affine(faces):
  photos, landmarks = faces
  images = jnp.asarray(photos[:3], jnp.float32) / 255.0
  batch = jax.jit(align.align, static_argnums=3)(images, jnp.asarray(landmarks[:3]), align.ARCFACE_TEMPLATE, 112)
  assert batch.shape == (3, 112, 112, 3)
  one = jax.jit(align.warp_affine, static_argnums=2)(images[2], align.similarity_transform_jnp(
      landmarks[2], align.ARCFACE_TEMPLATE), 112)
  np.testing.assert_allclose(batch[2], one, atol=1e-5)
