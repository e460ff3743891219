"""Similarity alignment of faces to a landmark template, differentiable in JAX.

Images are float32 [h, w, c] (any range; the pipeline uses RGB in [0, 1]).
An affine matrix M is [2, 3] and maps image pixels to crop pixels,
(u, v) = M @ (x, y, 1), with pixel centres on integer coordinates, as in
`cv2.warpAffine` and insightface's `norm_crop`. `warp_affine` samples each crop
pixel bilinearly at M^-1 (u, v), reading zeros outside the image (like
`cv2.BORDER_CONSTANT`), so the crop is linear in the image and its gradient
flows back to exactly the pixels that were read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Where insightface's ArcFace 112x112 crop puts the 5 landmarks (its
# `face_align.arcface_dst`), in the shared landmark order.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

# The canonical face frame a person's shared cloak lives in (`scope="person"`):
# the ArcFace template at 0.8x, centred in a 160-pixel square, so the frame
# covers every model's crop (dlib's and FaceNet's reach past ArcFace's).
CANONICAL_SIDE = 160
CANONICAL_TEMPLATE = ((ARCFACE_TEMPLATE - 56.0) * 0.8 + CANONICAL_SIDE / 2).astype(np.float32)


def _similarity(src, dst, xp):
  # Least-squares rotation + uniform scale + translation (Umeyama 1991 without
  # reflection, which is what skimage's SimilarityTransform estimates). In 2D
  # it has a closed form: treat points as complex numbers z (src) and w (dst);
  # the optimum of sum |c z + t - w|^2 is c = <z, w> / <z, z> on centred
  # points. No SVD, so it is cheap, vmaps and differentiates cleanly.
  src_mean = src.mean(axis=0)
  dst_mean = dst.mean(axis=0)
  s = src - src_mean
  d = dst - dst_mean
  norm = (s * s).sum()
  a = (s * d).sum() / norm
  b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
  linear = xp.stack([xp.stack([a, -b]), xp.stack([b, a])])
  t = dst_mean - linear @ src_mean
  return xp.concatenate([linear, t[:, None]], axis=1)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """NumPy similarity transform mapping `src` points onto `dst` in least squares.

  Args:
    src: [n, 2] (x, y) points, n >= 2, not all equal (else the result is NaN).
    dst: [n, 2] (x, y) target points.

  Returns:
    [2, 3] float64 matrix M with dst ~= M @ (src, 1); equal to
    `skimage.transform.SimilarityTransform` estimate's `params[:2]`.
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return _similarity(src, dst, np)


def similarity_transform_jnp(src: jax.Array, dst: jax.Array) -> jax.Array:
  """`similarity_transform` in jnp: jit-, vmap- and grad-friendly; [n, 2], [n, 2] -> [2, 3]."""
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  return _similarity(src, dst, jnp)


def invert_affine(m: jax.Array) -> jax.Array:
  """[2, 3] affine -> its inverse [2, 3]."""
  linear, t = m[:, :2], m[:, 2]
  det = linear[0, 0] * linear[1, 1] - linear[0, 1] * linear[1, 0]
  inv = jnp.stack([jnp.stack([linear[1, 1], -linear[0, 1]]),
                   jnp.stack([-linear[1, 0], linear[0, 0]])]) / det
  return jnp.concatenate([inv, -(inv @ t)[:, None]], axis=1)


def warp_affine(image: jax.Array, m: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """Crops `image` with the affine `m` (image -> crop), bilinear, zeros outside.

  Args:
    image: [h, w, c] float.
    m: [2, 3] matrix mapping image (x, y) to crop (u, v) pixels.
    size: crop side, or (height, width).

  Returns:
    [size, size, c] crop (or [height, width, c]), differentiable w.r.t.
    `image` and `m`. Matches `cv2.warpAffine(image, m, (w, h),
    borderValue=0)` up to OpenCV's 1/32-pixel fixed-point interpolation.
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  h, w, c = image.shape
  inv = invert_affine(jnp.asarray(m, jnp.float32))
  v, u = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32),
                      jnp.arange(out_w, dtype=jnp.float32), indexing="ij")
  x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
  y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = x - x0
  fy = y - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  flat = image.reshape(h * w, c)
  out = jnp.zeros((out_h, out_w, c), image.dtype)
  # Each of the 4 neighbours contributes only if it lies inside the image:
  # an outside neighbour reads the constant border (0), as OpenCV does.
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
      weight = jnp.where(inside, wx * wy, 0.0).astype(image.dtype)
      out = out + flat[idx] * weight[..., None]
  return out


def align(images: jax.Array, landmarks: jax.Array, template: np.ndarray | jax.Array,
          size: int) -> jax.Array:
  """Aligns a batch of faces: similarity from landmarks to `template`, then warp.

  Args:
    images: [b, h, w, c] float (one face per image; repeat an image for several faces).
    landmarks: [b, 5, 2] (x, y) landmarks in image pixels.
    template: [5, 2] where those landmarks go in the crop.
    size: crop side in pixels.

  Returns:
    [b, size, size, c] crops, differentiable w.r.t. `images`.
  """
  template = jnp.asarray(template, jnp.float32)
  ms = jax.vmap(similarity_transform_jnp, in_axes=(0, None))(landmarks, template)
  return jax.vmap(warp_affine, in_axes=(0, 0, None))(images, ms, size)
