"""The compiled cloak optimisation: the one jit boundary of the engine.

A batch item is one face *region*: a square patch of the photo at native
resolution (padded to a bucket size), a mask of the pixels the cloak may change,
and per extractor an affine map from patch pixels to that model's aligned crop.
The models see the cloaked patch only through the differentiable warp, so the
perturbation lives on the photo's own pixels (Fawkes, Shan et al. 2020, Eq. 3):

  min_x'  sum_e w_e ||F_e(A_e x') - t_e||^2 + lambda_i * max(DSSIM(x, x') - budget_i, 0)

with x' = (tanh(w) + 1) / 2 inside the mask, lambda_i adapted per image, and the
best within-budget iterate kept. Untargeted mode maximises ||F_e(A_e x') - F_e(A_e x)||.
With `ensemble="balanced"` (the default) the sum over members is replaced by a
soft maximum of each member's distance on its own scale, and `views` random
transformations of each model's input join the loss (`views.py`).
When the output is a JPEG, the features are taken after a differentiable round
trip of x' through that encoder (`jpeg.py`), so the cloak is built from what
the encoder keeps.
What the search variable is (every pixel, a smooth field under a
just-noticeable-difference bound, or one such field per person in a canonical
face frame) is `perturbations.py`'s; with `Batch.persons` the items of one
person share one variable (`person_mean`). The DSSIM budgets apply to all.
Images are float32 NHWC in [0, 1].

The whole step loop is one `lax.while_loop`. On XLA CPU a convolution's input
gradient is ~5-30x slower inside a loop body than outside one; the extractors
are built from `models/layers.py`, whose convolutions avoid that
(benchmarks/cloak.py measures the loop).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import jpeg, losses, perturbations
from jaxcloak.objective import Objective, member_sq_distances
from jaxcloak import views as views_lib
from jaxcloak.config import CloakConfig
from jaxcloak.faces.align import warp_affine
from jaxcloak.models import layers
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
  # [b] cap on the worst block's DSSIM (config.local_budget); None = no cap.
  local_budgets: Any = None
  # scope="person": [b] int32, which person of the batch each item shows (items of
  # a person share one search variable), and [b, 2, 3] patch -> canonical face
  # frame affines (region.canonical). None = every item its own search.
  persons: Any = None
  canonical: Any = None
  # [b] int32 visibility tile side per item (`losses.block_size` of its own bucket), so a
  # face padded into a larger canvas keeps its tiles; None = the canvas's.
  blocks: Any = None


class Result(NamedTuple):
  cloaked: jax.Array  # [b, s, s, 3]
  dssim: jax.Array  # [b] on the returned float patch
  found: jax.Array  # [b] bool: a within-budget iterate better than the original exists
  steps: jax.Array  # [b] steps taken before the item stopped
  start_distance: jax.Array  # [b] weighted L2 feature distance to target (or 0) at start
  final_distance: jax.Array  # [b] same for the returned patch
  self_distance: jax.Array  # [b] weighted L2 distance from the original features
  # Per member [b, m], plain view: L2 distance to the target (targeted) or from
  # the original features (untargeted), at the start and for the returned patch,
  # and L2 distance of the returned patch's features from the original's.
  member_start: jax.Array = None
  member_final: jax.Array = None
  member_self: jax.Array = None
  worst_block: jax.Array = None  # [b] worst-block DSSIM of the returned patch
  # scope="person": [b, ...] the kept search variable, each item holding its
  # person's (what `make_apply_fn` carries onto new photos); else None.
  field: jax.Array = None
  objective: jax.Array = None  # [b] the objective (objective.py) of the returned patch


class Knobs(NamedTuple):
  """Settings the compiled cloak takes as arguments, not as constants: another step
  count, seed, learning rate or starting penalty reuses the compiled program."""
  steps: Any  # int32 scalar: the most steps an item takes
  seed: Any  # int32 scalar: views and dropout draw from it
  learning_rate: Any  # float32 scalar
  penalty_init: Any  # float32 scalar: initial weight on the DSSIM excess
  # float32 scalars, the "shaped" perturbation's bounds (config.jnd_*); unread by "pixels".
  jnd_luma: Any
  jnd_chroma: Any
  jnd_masking: Any

  @classmethod
  def of(cls, config: CloakConfig) -> "Knobs":
    return cls(np.int32(config.steps), np.int32(config.seed), np.float32(config.learning_rate),
               np.float32(config.penalty_init), np.float32(config.jnd_luma),
               np.float32(config.jnd_chroma), np.float32(config.jnd_masking))


# Fields the compiled loop takes as data (Knobs, the batch's budgets) or never reads
# (target choice): configs that differ only in these compile to the same programs.
DATA_FIELDS = {"budget": 0.5, "target_choice": "max", "target_top_k": 5, "steps": 1, "seed": 0,
               "learning_rate": 0.01, "penalty_init": 50.0, "jnd_luma": 0.01,
               "jnd_chroma": 0.01, "jnd_masking": 1.0,
               "person_photos": 1, "person_match": 1.0,  # how many faces a person's search takes: the batch's data
               "min_ssimulacra2": None}  # held on the written file, outside the loop


def program_config(config: CloakConfig) -> CloakConfig:
  """The config with its data fields at fixed values: equal for configs sharing programs."""
  return dataclasses.replace(config, **DATA_FIELDS)


@dataclasses.dataclass
class CloakFn:
  """A compiled cloak function plus its trace counter (recompiles are bugs)."""
  fn: Any
  params: tuple
  traces: list
  knobs: Knobs

  def __call__(self, batch: Batch) -> Result:
    return self.fn(self.params, batch, self.knobs)


def _per_item_l1_normalise() -> optax.GradientTransformation:
  """Scales each item's gradient to unit mean |g| (MI-FGSM, Dong et al. 2018)."""
  def update(updates, state, params=None):
    del params
    scale = jnp.mean(jnp.abs(updates), axis=tuple(range(1, updates.ndim)), keepdims=True)
    return updates / jnp.maximum(scale, 1e-12), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _optimizer(config: CloakConfig, learning_rate) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(learning_rate)
  if config.optimizer == "mifgsm":
    # Momentum on L1-normalised gradients, then a signed step: the update that
    # transfers best in the black-box attack literature.
    return optax.chain(_per_item_l1_normalise(), optax.trace(decay=config.momentum),
                       optax.stateless(lambda g, _: jnp.sign(g)),
                       optax.scale(-learning_rate))
  return optax.adadelta(learning_rate, rho=0.95, eps=1e-7)


def _dropout_interceptor(key, rate: float):
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


def person_mean(persons, active):
  """x [b, ...] -> each item's person's mean over the active items (identity when persons
  is None): how one search variable is shared by a person's items."""
  if persons is None:
    return lambda x: x
  same = (persons[:, None] == persons[None, :]) & active[None, :]
  count = jnp.sum(same, axis=1, keepdims=True)
  # A padding item (no active peer) keeps its own value.
  share = jnp.where(count > 0, same / jnp.maximum(count, 1), jnp.eye(persons.shape[0]))
  return lambda x: jnp.tensordot(share.astype(x.dtype), x, axes=1)


def make_apply_fn(config: CloakConfig):
  """Jitted (batch, field, knobs) -> [b, s, s, 3] pixels: saved person fields carried onto
  faces without a search (the loop's own parametrisation, cap and mask)."""
  parametrise = perturbations.for_config(config)
  max_change = config.max_pixel_change

  @jax.jit
  def run(batch: Batch, field, knobs: Knobs):
    _, pixels = parametrise(batch, knobs)
    return perturbations.restrict(pixels(field), batch.patches, batch.masks[..., None],
                                  max_change)

  return run


def make_cloak_fn(extractors: Sequence[Extractor], config: CloakConfig) -> CloakFn:
  """Builds the jitted whole-batch optimisation for the given extractors and config."""
  extractors = tuple(extractors)
  objective_of = Objective.of(config, extractors)
  weighted = objective_of.weighted
  targeted = config.mode == "targeted"
  blur_sigmas = tuple(config.blur_sigmas)
  n_views = config.views
  pixel_kinds = tuple(k for k in config.view_kinds if k != "affine")
  jitter = "affine" in config.view_kinds
  dropout = config.feature_dropout
  stop_fraction = config.stop_fraction
  max_change = config.max_pixel_change
  parametrise = perturbations.for_config(config)
  traces: list = []

  def embed(ext, p, crops, key=None):
    if key is None or dropout == 0.0:
      return losses.normalize(ext.embed(p, crops))
    with nn.intercept_methods(_dropout_interceptor(key, dropout)):
      return losses.normalize(ext.embed(p, crops))

  def crops_of(ext, x, m):
    return jax.vmap(warp_affine, in_axes=(0, 0, None))(x, m, ext.input_size)

  def plain_features(params, x, affines):
    """[b, s, s, 3] patch -> per extractor [b, d] unit features of the aligned crop."""
    return [embed(e, p, crops_of(e, x, m)) for e, p, m in zip(extractors, params, affines)]

  def view_features(params, x, affines, key):
    """Per extractor [v, b, d] unit features of the extra views (None if there are none).

    The extra views are the fixed blurred copies (LowKey), `views` random
    views, and, when dropout is on and there is no other, the plain crop
    through the dropped model.
    """
    out = []
    for k, (e, p, m) in enumerate(zip(extractors, params, affines)):
      kk = jax.random.fold_in(key, k)
      crops = crops_of(e, x, m)
      views = [losses.gaussian_blur(crops, s) for s in blur_sigmas]
      for v in range(n_views):
        kv = jax.random.fold_in(kk, v)
        c = crops_of(e, x, views_lib.jitter_affines(kv, m, e.input_size)) if jitter else crops
        views.append(views_lib.apply_pixel_views(jax.random.fold_in(kv, 1), c, pixel_kinds))
      if not views and dropout > 0.0:
        views = [crops]
      if not views:
        return None
      b = x.shape[0]
      f = embed(e, p, jnp.concatenate(views), jax.random.fold_in(kk, n_views + 1))
      out.append(f.reshape(len(views), b, -1))
    return out

  def run(params, batch: Batch, knobs: Knobs) -> Result:
    traces.append(1)  # runs at trace time only
    optimizer = _optimizer(config, knobs.learning_rate)
    orig = batch.patches
    mask = batch.masks[..., None]
    block = losses.block_size(orig.shape[1]) if batch.blocks is None else batch.blocks
    w0, raw_pixels = parametrise(batch, knobs)
    shared = person_mean(batch.persons, batch.active)
    self_feats = plain_features(params, orig, batch.affines)
    refs = list(batch.targets) if targeted else self_feats
    start = member_sq_distances(self_feats, refs)  # [m, b]

    def pixels(w):
      return perturbations.restrict(raw_pixels(w), orig, mask, max_change)

    def visibility(x):
      # DSSIM stays on the raw pixels: through the simulated encode (whose float
      # arithmetic is not idempotent on a decoded JPEG, as libjpeg nearly is) its
      # penalty stalls the search. write_back checks the budget on the file.
      return losses.visibility(x, orig, batch.masks, block)

    def excess(ds, tiles):
      e = losses.budget_excess(ds, batch.budgets)
      if batch.local_budgets is not None:
        # Every block over the cap pays, not just the worst: a max alone moves
        # the change from block to block.
        e = e + jnp.sum(jnp.maximum(tiles - batch.local_budgets[:, None, None], 0.0), axis=(1, 2))
      return e

    def within(ds, tiles):
      ok = ds <= batch.budgets
      if batch.local_budgets is not None:
        ok = ok & (losses.worst_block(tiles) <= batch.local_budgets)
      return ok

    def evaluate(w):
      """Plain-view scoring of an iterate: what the written file holds, no randomness."""
      x = pixels(w)
      written = jpeg.apply(x, batch.jpeg)
      feats = plain_features(params, written, batch.affines)
      d = member_sq_distances(feats, refs)
      ds, tiles = visibility(x)
      return x, written, feats, d, ds, tiles

    def loss_fn(w, penalty, key):
      x, written, _, d, ds, tiles = evaluate(w)
      objective = objective_of(d, start)
      extra = view_features(params, written, batch.affines, key)
      if extra is None:
        loss = objective
      else:
        # EOT: the loss is the mean over the plain view and the extra views;
        # iterates are still scored on the plain view alone.
        n_extra = extra[0].shape[0]
        loss = (objective + n_extra * objective_of(member_sq_distances(extra, refs), start)) \
            / (1 + n_extra)
      per_item = loss + penalty * excess(ds, tiles)
      return jnp.sum(jnp.where(batch.active, per_item, 0.0)), (objective, d, ds, tiles)

    def goal_met(d, ok):
      if stop_fraction is None or not targeted:
        return jnp.zeros_like(ok)
      # Compare L2 (not squared) distances, as the paper's 20% rule does.
      return ok & (jnp.sqrt(weighted(d)) <= stop_fraction * jnp.sqrt(weighted(start)))

    class State(NamedTuple):
      step: jax.Array
      w: jax.Array
      opt_state: Any
      penalty: jax.Array
      best_w: jax.Array
      best_objective: jax.Array
      done: jax.Array
      steps: jax.Array
      key: jax.Array

    def keep_best(state, w, objective, ok):
      # A person's iterate is judged as a whole: its mean objective, every photo within budget.
      objective, ok = shared(objective), shared(ok.astype(jnp.float32)) > 1.0 - 1e-6
      better = ok & (objective < state.best_objective) & ~state.done
      best_w = jnp.where(better[:, None, None, None], w, state.best_w)
      return best_w, jnp.where(better, objective, state.best_objective)

    def body(state: State) -> State:
      key, step_key = jax.random.split(state.key)
      (_, (objective, d, ds, tiles)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.w, state.penalty, step_key)
      ok = within(ds, tiles)
      best_w, best_objective = keep_best(state, state.w, objective, ok)
      done = shared((state.done | goal_met(d, ok)).astype(jnp.float32)) > 1.0 - 1e-6
      updates, opt_state = optimizer.update(shared(grads), state.opt_state, state.w)
      frozen = done[:, None, None, None]
      w = jnp.where(frozen, state.w, optax.apply_updates(state.w, updates))
      penalty = losses.update_penalty_weight(state.penalty, ~ok)
      steps = jnp.where(done, state.steps, state.step + 1)
      return State(state.step + 1, w, opt_state, penalty, best_w, best_objective, done, steps,
                   key)

    def cond(state: State):
      return (state.step < knobs.steps) & ~jnp.all(state.done | ~batch.active)

    b = orig.shape[0]
    # The original itself is the fallback "iterate": objective of doing nothing.
    init_objective = shared(objective_of(start if targeted else jnp.zeros_like(start), start))
    state = State(jnp.int32(0), w0, optimizer.init(w0),
                  jnp.full((b,), knobs.penalty_init, jnp.float32),
                  w0, init_objective, ~batch.active, jnp.zeros((b,), jnp.int32),
                  jax.random.key(knobs.seed))
    state = jax.lax.while_loop(cond, body, state)
    # The last iterate has not been scored yet.
    _, _, _, d, ds, tiles = evaluate(state.w)
    best_w, best_objective = keep_best(state, state.w, objective_of(d, start), within(ds, tiles))

    cloaked, _, best_feats, d, ds, tiles = evaluate(best_w)
    found = best_objective < init_objective
    # Items with no better within-budget iterate get their original pixels back
    # exactly (not a tanh round trip of them), so their distances are the start's.
    member_self = member_sq_distances(best_feats, self_feats)
    member_self = jnp.where(found, member_self, 0.0)
    cloaked = jnp.where(found[:, None, None, None], cloaked, orig)
    ds, worst = jnp.where(found, ds, 0.0), jnp.where(found, losses.worst_block(tiles), 0.0)
    no_move = start if targeted else jnp.zeros_like(start)
    d = jnp.where(found, d, no_move)
    return Result(cloaked, ds, found, state.steps, jnp.sqrt(weighted(no_move)),
                  jnp.sqrt(weighted(d)), jnp.sqrt(weighted(member_self)),
                  jnp.sqrt(no_move).T, jnp.sqrt(d).T, jnp.sqrt(member_self).T, worst,
                  None if batch.persons is None else best_w,
                  jnp.where(found, best_objective, init_objective))

  params = tuple(e.params for e in extractors)
  return CloakFn(jax.jit(run), params, traces, Knobs.of(config))


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
