"""The compiled cloak optimisation: the one jit boundary of the engine.

A batch item is one face *region*: a square patch of the photo at native
resolution (padded to a bucket size), a mask of the pixels the cloak may change,
and per extractor an affine map from patch pixels to that model's aligned crop.
The models see the cloaked patch only through the differentiable warp, so the
perturbation lives on the photo's own pixels (Fawkes, Shan et al. 2020, Eq. 3):

  min_x'  sum_e w_e ||F_e(A_e x') - t_e||^2 + lambda_i * max(DSSIM(x, x') - budget_i, 0)

with x' = (tanh(w) + 1) / 2 inside the mask, lambda_i adapted per image, and the
best within-budget iterate kept. Untargeted mode maximises ||F_e(A_e x') - F_e(A_e x)||.
When the output is a JPEG, the features are taken after a differentiable round
trip of x' through that encoder (`jpeg.py`), so the cloak is built from what
the encoder keeps.
Images are float32 NHWC in [0, 1].

The whole step loop is one `lax.while_loop`. On XLA CPU a convolution's input
gradient is ~5-30x slower inside a loop body than outside one; the extractors
are built from `models/layers.py`, whose convolutions avoid that
(benchmarks/cloak.py measures the loop).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import jpeg, losses
from jaxcloak.config import CloakConfig
from jaxcloak.faces.align import warp_affine
from jaxcloak.models.base import Extractor


class Batch(NamedTuple):
  """One compiled-shape batch of face regions (b items, bucket side s)."""
  patches: jax.Array  # [b, s, s, 3] original pixels in [0, 1]
  masks: jax.Array  # [b, s, s] 1 where the cloak may change pixels
  affines: tuple  # per extractor [b, 2, 3], patch pixels -> crop pixels
  targets: tuple  # per extractor [b, d] unit target features (ignored if untargeted)
  budgets: jax.Array  # [b] DSSIM budget per item
  active: jax.Array  # [b] bool, False for padding items
  # [b, s, s, 3] where the search starts (e.g. the re-decoded written cloak of
  # a previous round); None = the original patches. DSSIM is always measured
  # against `patches`.
  starts: Any = None
  # jpeg.JpegSpec: score iterates after a simulated round trip through the
  # encoder the output is written with (None = score the pixels as they are).
  jpeg: Any = None


class Result(NamedTuple):
  cloaked: jax.Array  # [b, s, s, 3]
  dssim: jax.Array  # [b] on the returned float patch
  found: jax.Array  # [b] bool: a within-budget iterate better than the original exists
  steps: jax.Array  # [b] steps taken before the item stopped
  start_distance: jax.Array  # [b] weighted L2 feature distance to target (or 0) at start
  final_distance: jax.Array  # [b] same for the returned patch
  self_distance: jax.Array  # [b] weighted L2 distance from the original features


@dataclasses.dataclass
class CloakFn:
  """A compiled cloak function plus its trace counter (recompiles are bugs)."""
  fn: Any
  params: tuple
  traces: list

  def __call__(self, batch: Batch) -> Result:
    return self.fn(self.params, batch)


def _optimizer(config: CloakConfig) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(config.learning_rate)
  return optax.adadelta(config.learning_rate, rho=0.95, eps=1e-7)


def make_cloak_fn(extractors: Sequence[Extractor], config: CloakConfig) -> CloakFn:
  """Builds the jitted whole-batch optimisation for the given extractors and config."""
  extractors = tuple(extractors)
  weights = jnp.asarray(config.weights, jnp.float32)
  weights = weights / jnp.sum(weights)
  targeted = config.mode == "targeted"
  optimizer = _optimizer(config)
  blur_sigmas = tuple(config.blur_sigmas)
  stop_fraction = config.stop_fraction
  traces: list = []

  def features(params, x, affines):
    """[b, s, s, 3] patch -> per extractor list of [(1 + n_blur) , b, d] unit features."""
    out = []
    for ext, p, m in zip(extractors, params, affines):
      crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(x, m, ext.input_size)
      views = [crops] + [losses.gaussian_blur(crops, s) for s in blur_sigmas]
      out.append(jnp.stack([losses.normalize(ext.embed(p, v)) for v in views]))
    return out

  def weighted_distance(feats, refs):
    """Weighted mean over extractors (and blurred views) of squared distances -> [b]."""
    d = [jnp.mean(jnp.sum(jnp.square(f - r), axis=-1), axis=0) for f, r in zip(feats, refs)]
    return jnp.tensordot(weights, jnp.stack(d), axes=1)

  def run(params, batch: Batch) -> Result:
    traces.append(1)  # runs at trace time only
    orig = batch.patches
    mask = batch.masks[..., None]
    w0 = losses.to_tanh_space(orig if batch.starts is None else batch.starts)
    self_feats = features(params, orig, batch.affines)
    refs = [t[None] for t in batch.targets] if targeted else self_feats
    start = weighted_distance(self_feats, refs)

    def evaluate(w):
      x = losses.from_tanh_space(w) * mask + orig * (1.0 - mask)
      written = jpeg.apply(x, batch.jpeg)  # what the file will hold
      feats = features(params, written, batch.affines)
      dist = weighted_distance(feats, refs)
      objective = dist if targeted else -dist
      # DSSIM stays on the raw pixels: through the simulated encode (whose float
      # arithmetic is not idempotent on a decoded JPEG, as libjpeg nearly is) its
      # penalty stalls the search. write_back checks the budget on the file.
      ds = losses.dssim(x, orig, batch.masks)
      return x, objective, dist, ds, feats

    def loss_fn(w, penalty):
      _, objective, dist, ds, _ = evaluate(w)
      per_item = objective + penalty * losses.budget_excess(ds, batch.budgets)
      return jnp.sum(jnp.where(batch.active, per_item, 0.0)), (objective, dist, ds)

    def goal_met(dist, ds):
      within = ds <= batch.budgets
      if stop_fraction is None or not targeted:
        return jnp.zeros_like(within)
      # Compare L2 (not squared) distances, as the paper's 20% rule does.
      return within & (jnp.sqrt(dist) <= stop_fraction * jnp.sqrt(start))

    class State(NamedTuple):
      step: jax.Array
      w: jax.Array
      opt_state: Any
      penalty: jax.Array
      best_w: jax.Array
      best_objective: jax.Array
      done: jax.Array
      steps: jax.Array

    def keep_best(state, w, objective, ds):
      better = (ds <= batch.budgets) & (objective < state.best_objective) & ~state.done
      best_w = jnp.where(better[:, None, None, None], w, state.best_w)
      return best_w, jnp.where(better, objective, state.best_objective)

    def body(state: State) -> State:
      (_, (objective, dist, ds)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.w, state.penalty)
      best_w, best_objective = keep_best(state, state.w, objective, ds)
      done = state.done | goal_met(dist, ds)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.w)
      frozen = done[:, None, None, None]
      w = jnp.where(frozen, state.w, optax.apply_updates(state.w, updates))
      penalty = losses.update_penalty_weight(state.penalty, ds > batch.budgets)
      steps = jnp.where(done, state.steps, state.step + 1)
      return State(state.step + 1, w, opt_state, penalty, best_w, best_objective, done, steps)

    def cond(state: State):
      return (state.step < config.steps) & ~jnp.all(state.done | ~batch.active)

    b = orig.shape[0]
    # The original itself is the fallback "iterate": objective of doing nothing.
    init_objective = start if targeted else jnp.zeros_like(start)
    state = State(jnp.int32(0), w0, optimizer.init(w0),
                  jnp.full((b,), config.penalty_init, jnp.float32),
                  w0, init_objective, ~batch.active, jnp.zeros((b,), jnp.int32))
    state = jax.lax.while_loop(cond, body, state)
    # The last iterate has not been scored yet.
    _, objective, _, ds, _ = evaluate(state.w)
    best_w, best_objective = keep_best(state, state.w, objective, ds)

    cloaked, _, dist, ds, best_feats = evaluate(best_w)
    found = best_objective < init_objective
    # Items with no better within-budget iterate get their original pixels back
    # exactly (not a tanh round trip of them), so their self distance is 0.
    final_self = jnp.where(found, weighted_distance(best_feats, self_feats), 0.0)
    cloaked = jnp.where(found[:, None, None, None], cloaked, orig)
    ds = jnp.where(found, ds, 0.0)
    dist = jnp.where(found, dist, start)
    return Result(cloaked, ds, found, state.steps, jnp.sqrt(start), jnp.sqrt(dist),
                  jnp.sqrt(final_self))

  params = tuple(e.params for e in extractors)
  return CloakFn(jax.jit(run), params, traces)


def feature_fn(extractor: Extractor):
  """Jitted [b, s, s, 3] aligned crops -> [b, d] unit features for one extractor."""
  @jax.jit
  def embed(params, crops):
    return losses.normalize(extractor.embed(params, crops))
  return lambda crops: embed(extractor.params, crops)


def region_features(extractors: Sequence[Extractor]):
  """Jitted (patches, per-extractor affines) -> per-extractor [b, d] unit features."""
  extractors = tuple(extractors)

  @jax.jit
  def run(params, patches, affines):
    out = []
    for ext, p, m in zip(extractors, params, affines):
      crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(patches, m, ext.input_size)
      out.append(losses.normalize(ext.embed(p, crops)))
    return tuple(out)

  params = tuple(e.params for e in extractors)
  return lambda patches, affines: run(params, patches, affines)


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh | None) -> Batch:
  """Places a batch with its leading axis split over the mesh's 'data' axis."""
  if mesh is None:
    return batch
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.tree.map(lambda x: jax.device_put(x, spec), batch)


def data_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices, ("data",))
