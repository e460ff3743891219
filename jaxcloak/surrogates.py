"""What the cloak's ensemble sees of a face region: each member's aligned crop, and the
random views of it that the loss averages over (expectation over transformations).

A patch [b, s, s, 3] reaches member e only through the differentiable warp of its
affine (patch pixels -> e's crop), so a gradient flows back to the pixels e reads.
The extra views are the fixed blurred copies (LowKey), `views` random views
(`views.py`: alignment jitter, flip, blur, JPEG, noise) and, when feature dropout
is on and there is no other, the plain crop through the dropped model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcloak import losses
from jaxcloak import views as views_lib
from jaxcloak.config import CloakConfig
from jaxcloak.faces.align import warp_affine
from jaxcloak.models import layers
from jaxcloak.models.base import Extractor


def dropout_interceptor(key, rate: float):
  """Flax interceptor: drops `rate` of every conv output, a fresh mask per conv."""
  count = [0]

  def intercept(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, (layers.Conv, nn.Conv)) and context.method_name == "__call__":
      count[0] += 1
      keep = jax.random.bernoulli(jax.random.fold_in(key, count[0]), 1.0 - rate, y.shape)
      y = jnp.where(keep, y / (1.0 - rate), 0.0)
    return y

  return intercept


@dataclasses.dataclass(frozen=True)
class Surrogates:
  extractors: tuple[Extractor, ...]
  blur_sigmas: tuple[float, ...] = ()
  views: int = 0
  view_kinds: tuple[str, ...] = ()
  dropout: float = 0.0

  @classmethod
  def of(cls, extractors: Sequence[Extractor], config: CloakConfig) -> "Surrogates":
    return cls(tuple(extractors), tuple(config.blur_sigmas), config.views,
               tuple(config.view_kinds), config.feature_dropout)

  def embed(self, ext, p, crops, key=None):
    if key is None or self.dropout == 0.0:
      return losses.normalize(ext.embed(p, crops))
    with nn.intercept_methods(dropout_interceptor(key, self.dropout)):
      return losses.normalize(ext.embed(p, crops))

  @staticmethod
  def crops(ext, x, m):
    return jax.vmap(warp_affine, in_axes=(0, 0, None))(x, m, ext.input_size)

  def plain(self, params, x, affines) -> list:
    """[b, s, s, 3] patch -> per member [b, d] unit features of its aligned crop."""
    return [self.embed(e, p, self.crops(e, x, m))
            for e, p, m in zip(self.extractors, params, affines)]

  def extra(self, params, x, affines, key) -> list | None:
    """Per member [v, b, d] unit features of the extra views (None if there are none)."""
    pixel_kinds = tuple(k for k in self.view_kinds if k != "affine")
    jitter = "affine" in self.view_kinds
    out = []
    for k, (e, p, m) in enumerate(zip(self.extractors, params, affines)):
      kk = jax.random.fold_in(key, k)
      crops = self.crops(e, x, m)
      views = [losses.gaussian_blur(crops, s) for s in self.blur_sigmas]
      for v in range(self.views):
        kv = jax.random.fold_in(kk, v)
        c = self.crops(e, x, views_lib.jitter_affines(kv, m, e.input_size)) if jitter else crops
        views.append(views_lib.apply_pixel_views(jax.random.fold_in(kv, 1), c, pixel_kinds))
      if not views and self.dropout > 0.0:
        views = [crops]
      if not views:
        return None
      f = self.embed(e, p, jnp.concatenate(views), jax.random.fold_in(kk, self.views + 1))
      out.append(f.reshape(len(views), x.shape[0], -1))
    return out
