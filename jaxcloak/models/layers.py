"""Convolution and pooling layers whose input gradients are fast inside XLA CPU loops.

The cloak differentiates the extractors with respect to their input pixels many
times inside one `lax.while_loop`. On XLA CPU (jax 0.10) two ops are slow there:

- The input gradient of `lax.conv_general_dilated` is a convolution with the
  kernel flipped and its in/out axes swapped. Outside a loop XLA materialises
  that kernel and runs the fast (YNNPACK) convolution; inside a loop body it
  folds the swap into the convolution's dimension labels and falls back to a
  generic convolution: 3x3 convs measured ~30x slower, the whole dlib
  gradient ~5x. `conv2d` writes the input gradient out with a materialised
  kernel behind an optimisation barrier, so loop and non-loop code match.
- Depthwise convolutions (forward and backward) take XLA CPU's slow generic
  path; `depthwise_conv2d` is a sum of shifted, per-channel-scaled slices.

Parameter names and layouts match `flax.linen.Conv` (kernel [kh, kw, in, out],
bias [out]), so converted weights load unchanged. Images are NHWC.
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")
# HIGHEST keeps the ports' 1e-4 parity on GPUs (TF32 otherwise); no-op on CPU.
_PRECISION = jax.lax.Precision.HIGHEST

Padding = Union[str, Sequence[tuple[int, int]]]


def explicit_padding(padding: Padding, size: Sequence[int], kernel: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """'SAME' / 'VALID' / explicit pairs -> explicit (lo, hi) per spatial dim (lax's rules)."""
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  if padding == "VALID":
    return ((0, 0),) * len(size)
  if padding != "SAME":
    raise ValueError(f"unknown padding {padding!r}")
  out = []
  for n, k, s in zip(size, kernel, strides):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    out.append((total // 2, total - total // 2))
  return tuple(out)


def _conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN,
                                      precision=_PRECISION)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO convolution, explicit padding; same values and gradients as lax's."""
  return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, res, g):
  x, kernel = res
  # The transposed convolution: g dilated by the stride, convolved with the
  # flipped kernel (in <-> out), padded so the result has x's spatial size.
  # The barrier keeps XLA from folding the transpose back into the conv.
  flipped = jax.lax.optimization_barrier(
      jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2)))
  pads = []
  for n, m, k, s, (lo, _) in zip(x.shape[1:3], g.shape[1:3], kernel.shape[:2], strides, padding):
    before = k - 1 - lo
    pads.append((before, n + k - 1 - ((m - 1) * s + 1) - before))
  dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DN, precision=_PRECISION)
  # The kernel gradient is lax's own; XLA drops it when only dx is used.
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, strides, padding), kernel)
  return dx, kernel_vjp(g)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _shifted_sum(xp, kernel, strides, out_hw):
  """sum_ij xp[:, i + s*y, j + s*x, :] * kernel[i, j, 0, :] (kernel [kh, kw, 1, c])."""
  (sh, sw), (h, w) = strides, out_hw
  out = None
  for i in range(kernel.shape[0]):
    for j in range(kernel.shape[1]):
      tap = xp[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :] * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                     padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """Depthwise conv (kernel [kh, kw, 1, c]) as a sum of shifted, scaled strided slices."""
  kh, kw = kernel.shape[:2]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_hw = ((xp.shape[1] - kh) // strides[0] + 1, (xp.shape[2] - kw) // strides[1] + 1)
  return _shifted_sum(xp, kernel, strides, out_hw)


def _depthwise_fwd(x, kernel, strides, padding):
  return depthwise_conv2d(x, kernel, strides, padding), (x, kernel)


def _depthwise_bwd(strides, padding, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  # The transpose is again a depthwise conv: of g dilated by the stride, with
  # the flipped kernel. The barrier materialises g once; fused, XLA recomputed
  # g's producers for every tap (~10x slower).
  g = jax.lax.optimization_barrier(g)
  pads = [(0, 0, 0)]
  for n, m, k, s, (lo, hi) in zip(x.shape[1:3], g.shape[1:3], kernel.shape[:2], strides, padding):
    # Full-correlation padding (k - 1 each side) in padded-input coordinates,
    # then cropped to x's own pixels [lo, lo + n).
    before = k - 1 - lo
    pads.append((before, n + k - 1 - ((m - 1) * s + 1) - before, s - 1))
  pads.append((0, 0, 0))
  gp = jax.lax.pad(g, jnp.zeros((), g.dtype), pads)
  dx = _shifted_sum(gp, jnp.flip(kernel, (0, 1)), (1, 1), x.shape[1:3])
  _, kernel_vjp = jax.vjp(lambda k: depthwise_conv2d.fun(x, k, strides, padding), kernel)
  return dx, kernel_vjp(g)[0]


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


def space_to_depth_conv2d(x: jax.Array, kernel: jax.Array, stride: int,
                          padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """A stride-s conv as a stride-1 conv on s x s space-to-depth blocks.

  For few input channels (an RGB stem) XLA CPU's strided convolution is slow;
  regrouping each s x s block of pixels into channels (and the kernel alike,
  zero-padded to a multiple of s) gives the same sums as a stride-1 conv.
  """
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  b, ph, pw, _ = x.shape
  sizes = []
  for n, k in ((ph, kh), (pw, kw)):
    m, kb = (n - k) // stride + 1, -(-k // stride)
    sizes.append((m + kb - 1, kb))
  (nh, kbh), (nw, kbw) = sizes
  # Crop (rows no output reads) or zero-pad to whole blocks.
  x = x[:, :nh * stride, :nw * stride]
  x = jnp.pad(x, ((0, 0), (0, nh * stride - x.shape[1]), (0, nw * stride - x.shape[2]), (0, 0)))
  x = x.reshape(b, nh, stride, nw, stride, cin).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, nh, nw, stride * stride * cin)
  kernel = jnp.pad(kernel, ((0, kbh * stride - kh), (0, kbw * stride - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(kbh, stride, kbw, stride, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(kbh, kbw, stride * stride * cin, cout)
  return conv2d(x, kernel, (1, 1), ((0, 0), (0, 0)))


class Conv(nn.Module):
  """Drop-in for `nn.Conv` (same params), built on `conv2d` / `depthwise_conv2d`.

  `feature_group_count` may be 1 or the number of input channels (depthwise).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: Padding = "SAME"
  feature_group_count: int = 1
  use_bias: bool = True
  space_to_depth: bool = False  # strided conv via `space_to_depth_conv2d`

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel_size = tuple(self.kernel_size)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    padding = explicit_padding(self.padding, x.shape[1:3], kernel_size, strides)
    groups = self.feature_group_count
    if groups not in (1, cin) or (groups == cin and self.features != cin):
      raise ValueError(f"only plain or depthwise convs are supported, got groups={groups}")
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        kernel_size + (cin // groups, self.features))
    if kernel_size == (1, 1) and strides == (1, 1) and padding == ((0, 0), (0, 0)) and groups == 1:
      # A matmul: its gradient needs no transposed copy of the kernel (which
      # XLA CPU makes slowly, on every call outside a loop).
      y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0], precision=_PRECISION)
    elif self.space_to_depth and groups == 1 and strides[0] == strides[1] > 1:
      y = space_to_depth_conv2d(x, kernel, strides[0], padding)
    elif groups == 1 or cin == 1:
      y = conv2d(x, kernel, strides, padding)
    else:
      y = depthwise_conv2d(x, kernel, strides, padding)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """VALID max pool as running maxima over strided slices, rows then columns.

  Same values as `nn.max_pool` (max is separable); its gradient is elementwise
  selects instead of XLA's select-and-scatter, ~4x faster on CPU. (At exact
  ties the gradient is shared rather than given to one element.)
  """
  def pool(x, axis):
    n = (x.shape[axis] - window) // stride + 1
    taps = [jax.lax.slice_in_dim(x, i, i + (n - 1) * stride + 1, stride, axis)
            for i in range(window)]
    out = taps[0]
    for tap in taps[1:]:
      out = jnp.maximum(out, tap)
    return out
  return pool(pool(x, 1), 2)
