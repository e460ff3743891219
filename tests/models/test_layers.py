"""layers.py: same values and gradients as lax's convolutions and flax's max pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak.models import layers

DN = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, k, strides, padding, groups=1):
  return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN,
                                      feature_group_count=groups,
                                      precision=jax.lax.Precision.HIGHEST)


def grads(f, x, k, w):
  """Input and kernel gradients of a random linear read-out of f(x, k)."""
  return jax.grad(lambda x, k: jnp.sum(f(x, k) * w), argnums=(0, 1))(x, k)


def assert_close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1.0)


def assert_same_values_and_grads(ours, ref, x, k, rng):
  """ours(x, k) == ref(x, k), and so are both gradients of a random read-out."""
  y = ref(x, k)
  assert_close(ours(x, k), y)
  w = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  for a, b in zip(grads(ours, x, k, w), grads(ref, x, k, w)):
    assert_close(a, b)


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 11, 11, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 12, 11, 4), (3, 3, 4, 5), (2, 2), ((0, 0), (0, 0))),
    ((2, 13, 13, 3), (7, 7, 3, 6), (2, 2), ((0, 0), (0, 0))),
    ((1, 9, 9, 4), (1, 7, 4, 3), (1, 1), ((0, 0), (3, 3))),
    ((1, 10, 9, 2), (3, 2, 2, 3), (2, 1), ((1, 0), (2, 1))),
])
def test_conv2d_matches_lax(shape, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
  ref = lambda x, k: lax_conv(x, k, strides, padding)
  ours = lambda x, k: layers.conv2d(x, k, strides, padding)
  assert_same_values_and_grads(ours, ref, x, k, rng)
  if strides[0] == strides[1] and padding[0] == padding[1]:
    s2d = lambda x, k: layers.space_to_depth_conv2d(x, k, strides[0], padding)
    assert_same_values_and_grads(s2d, ref, x, k, rng)


@pytest.mark.parametrize("shape,strides,padding", [
    ((2, 10, 10, 6), (1, 1), ((1, 1), (1, 1))),
    ((2, 11, 10, 6), (2, 2), ((1, 1), (1, 1))),
    ((1, 9, 8, 3), (2, 2), ((0, 1), (2, 0))),
])
def test_depthwise_matches_lax(shape, strides, padding):
  rng = np.random.default_rng(1)
  c = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, c)), jnp.float32)
  ref = lambda x, k: lax_conv(x, k, strides, padding, groups=c)
  ours = lambda x, k: layers.depthwise_conv2d(x, k, strides, padding)
  assert_same_values_and_grads(ours, ref, x, k, rng)


def test_conv_module_has_nn_conv_params_and_values():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.float32)
  for kw in (dict(features=5, kernel_size=(3, 3), padding="SAME"),
             dict(features=5, kernel_size=(1, 1), use_bias=False),
             dict(features=5, kernel_size=(3, 3), strides=2, padding="VALID"),
             dict(features=4, kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)),
                  feature_group_count=4, use_bias=False)):
    params = nn.Conv(**kw, precision=jax.lax.Precision.HIGHEST).init(jax.random.key(0), x)
    ref = nn.Conv(**kw, precision=jax.lax.Precision.HIGHEST).apply(params, x)
    assert_close(layers.Conv(**kw).apply(params, x), ref)


def test_max_pool_matches_flax():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 12, 11, 3)), jnp.float32)
  for window, stride in ((3, 2), (2, 2), (3, 1)):
    ref = nn.max_pool(x, (window, window), (stride, stride), padding="VALID")
    assert_close(layers.max_pool(x, window, stride), ref)
    # Without ties the gradients agree too.
    w = jnp.asarray(np.random.default_rng(4).standard_normal(ref.shape), jnp.float32)
    g_ours = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, stride) * w))(x)
    g_ref = jax.grad(lambda x: jnp.sum(
        nn.max_pool(x, (window, window), (stride, stride), padding="VALID") * w))(x)
    assert_close(g_ours, g_ref)
