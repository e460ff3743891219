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

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import jpeg, losses, perturbations
from jaxcloak.objective import Objective, member_sq_distances
from jaxcloak.programs import Program
from jaxcloak.surrogates import Surrogates
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

  def run(batch: Batch, field, knobs: Knobs):
    _, pixels = parametrise(batch, knobs)
    return perturbations.restrict(pixels(field), batch.patches, batch.masks[..., None],
                                  max_change)

  return Program(jax.jit(run), repr(("apply", program_config(config))))


class _State(NamedTuple):
  step: jax.Array
  w: jax.Array
  opt_state: Any
  penalty: jax.Array
  best_w: jax.Array
  best_objective: jax.Array
  done: jax.Array
  steps: jax.Array
  key: jax.Array


class _Scene(NamedTuple):
  """One call's data and what is derived from it once, before the loop."""
  params: tuple
  batch: Batch
  knobs: Knobs
  block: Any  # visibility tile side(s)
  raw_pixels: Callable  # iterate -> pixels, before the cap and the mask
  shared: Callable  # per item -> its person's mean (identity for scope="photo")
  self_feats: list  # per member [b, d] features of the original
  refs: list  # per member [b, d]: the target's, or the original's (untargeted)
  start: jax.Array  # [m, b] squared member distances of the original


@dataclasses.dataclass(frozen=True)
class _Search:
  """The compiled search, in named pieces: scoring an iterate, a step, keeping the best."""
  surrogates: Surrogates
  objective: Objective
  parametrise: Callable
  config: CloakConfig

  @property
  def targeted(self) -> bool:
    return self.config.mode == "targeted"

  def scene(self, params, batch: Batch, knobs: Knobs) -> _Scene:
    block = losses.block_size(batch.patches.shape[1]) if batch.blocks is None else batch.blocks
    _, raw_pixels = self.parametrise(batch, knobs)
    self_feats = self.surrogates.plain(params, batch.patches, batch.affines)
    refs = list(batch.targets) if self.targeted else self_feats
    return _Scene(params, batch, knobs, block, raw_pixels,
                  person_mean(batch.persons, batch.active), self_feats, refs,
                  member_sq_distances(self_feats, refs))

  def evaluate(self, sc: _Scene, w):
    """Plain-view scoring of an iterate: what the written file holds, no randomness."""
    orig = sc.batch.patches
    x = perturbations.restrict(sc.raw_pixels(w), orig, sc.batch.masks[..., None],
                               self.config.max_pixel_change)
    written = jpeg.apply(x, sc.batch.jpeg)
    feats = self.surrogates.plain(sc.params, written, sc.batch.affines)
    # DSSIM stays on the raw pixels: through the simulated encode (whose float
    # arithmetic is not idempotent on a decoded JPEG, as libjpeg nearly is) its
    # penalty stalls the search. write_back checks the budget on the file.
    ds, tiles = losses.visibility(x, orig, sc.batch.masks, sc.block)
    return x, written, feats, member_sq_distances(feats, sc.refs), ds, tiles

  @staticmethod
  def excess(sc: _Scene, ds, tiles):
    e = losses.budget_excess(ds, sc.batch.budgets)
    if sc.batch.local_budgets is not None:
      # Every block over the cap pays, not just the worst: a max alone moves
      # the change from block to block.
      over = jnp.maximum(tiles - sc.batch.local_budgets[:, None, None], 0.0)
      e = e + jnp.sum(over, axis=(1, 2))
    return e

  @staticmethod
  def within(sc: _Scene, ds, tiles):
    ok = ds <= sc.batch.budgets
    if sc.batch.local_budgets is not None:
      ok = ok & (losses.worst_block(tiles) <= sc.batch.local_budgets)
    return ok

  def loss(self, w, penalty, key, sc: _Scene):
    _, written, _, d, ds, tiles = self.evaluate(sc, w)
    objective = self.objective(d, sc.start)
    extra = self.surrogates.extra(sc.params, written, sc.batch.affines, key)
    loss = objective
    if extra is not None:
      # EOT: the loss is the mean over the plain view and the extra views;
      # iterates are still scored on the plain view alone.
      n = extra[0].shape[0]
      loss = (objective + n * self.objective(member_sq_distances(extra, sc.refs), sc.start)) \
          / (1 + n)
    per_item = loss + penalty * self.excess(sc, ds, tiles)
    return jnp.sum(jnp.where(sc.batch.active, per_item, 0.0)), (objective, d, ds, tiles)

  def goal_met(self, sc: _Scene, d, ok):
    if self.config.stop_fraction is None or not self.targeted:
      return jnp.zeros_like(ok)
    # Compare L2 (not squared) distances, as the paper's 20% rule does.
    weighted = self.objective.weighted
    return ok & (jnp.sqrt(weighted(d)) <= self.config.stop_fraction * jnp.sqrt(weighted(sc.start)))

  @staticmethod
  def keep_best(sc: _Scene, state: _State, w, objective, ok):
    # A person's iterate is judged as a whole: its mean objective, every photo within budget.
    objective, ok = sc.shared(objective), sc.shared(ok.astype(jnp.float32)) > 1.0 - 1e-6
    better = ok & (objective < state.best_objective) & ~state.done
    best_w = jnp.where(better[:, None, None, None], w, state.best_w)
    return best_w, jnp.where(better, objective, state.best_objective)

  def step(self, sc: _Scene, optimizer, state: _State) -> _State:
    key, step_key = jax.random.split(state.key)
    loss = jax.value_and_grad(lambda w: self.loss(w, state.penalty, step_key, sc), has_aux=True)
    (_, (objective, d, ds, tiles)), grads = loss(state.w)
    ok = self.within(sc, ds, tiles)
    best_w, best_objective = self.keep_best(sc, state, state.w, objective, ok)
    done = sc.shared((state.done | self.goal_met(sc, d, ok)).astype(jnp.float32)) > 1.0 - 1e-6
    updates, opt_state = optimizer.update(sc.shared(grads), state.opt_state, state.w)
    w = jnp.where(done[:, None, None, None], state.w, optax.apply_updates(state.w, updates))
    penalty = losses.update_penalty_weight(state.penalty, ~ok)
    steps = jnp.where(done, state.steps, state.step + 1)
    return _State(state.step + 1, w, opt_state, penalty, best_w, best_objective, done, steps, key)

  def run(self, params, batch: Batch, knobs: Knobs) -> Result:
    sc = self.scene(params, batch, knobs)
    optimizer = _optimizer(self.config, knobs.learning_rate)
    w0, _ = self.parametrise(batch, knobs)
    no_move = sc.start if self.targeted else jnp.zeros_like(sc.start)
    # The original itself is the fallback "iterate": objective of doing nothing.
    init_objective = sc.shared(self.objective(no_move, sc.start))
    b = batch.patches.shape[0]
    state = _State(jnp.int32(0), w0, optimizer.init(w0),
                   jnp.full((b,), knobs.penalty_init, jnp.float32), w0, init_objective,
                   ~batch.active, jnp.zeros((b,), jnp.int32), jax.random.key(knobs.seed))
    state = jax.lax.while_loop(
        lambda st: (st.step < knobs.steps) & ~jnp.all(st.done | ~batch.active),
        lambda st: self.step(sc, optimizer, st), state)
    # The last iterate has not been scored yet.
    _, _, _, d, ds, tiles = self.evaluate(sc, state.w)
    best_w, best_objective = self.keep_best(sc, state, state.w, self.objective(d, sc.start),
                                            self.within(sc, ds, tiles))
    return self.result(sc, state, best_w, best_objective, init_objective, no_move)

  def result(self, sc: _Scene, state: _State, best_w, best_objective, init_objective,
             no_move) -> Result:
    cloaked, _, best_feats, d, ds, tiles = self.evaluate(sc, best_w)
    found = best_objective < init_objective
    # Items with no better within-budget iterate get their original pixels back
    # exactly (not a tanh round trip of them), so their distances are the start's.
    member_self = jnp.where(found, member_sq_distances(best_feats, sc.self_feats), 0.0)
    cloaked = jnp.where(found[:, None, None, None], cloaked, sc.batch.patches)
    ds, worst = jnp.where(found, ds, 0.0), jnp.where(found, losses.worst_block(tiles), 0.0)
    d = jnp.where(found, d, no_move)
    weighted = self.objective.weighted
    return Result(cloaked, ds, found, state.steps, jnp.sqrt(weighted(no_move)),
                  jnp.sqrt(weighted(d)), jnp.sqrt(weighted(member_self)),
                  jnp.sqrt(no_move).T, jnp.sqrt(d).T, jnp.sqrt(member_self).T, worst,
                  None if sc.batch.persons is None else best_w,
                  jnp.where(found, best_objective, init_objective))


def make_cloak_fn(extractors: Sequence[Extractor], config: CloakConfig) -> CloakFn:
  """Builds the jitted whole-batch optimisation for the given extractors and config."""
  extractors = tuple(extractors)
  search = _Search(Surrogates.of(extractors, config), Objective.of(config, extractors),
                   perturbations.for_config(config), config)
  traces: list = []

  def run(params, batch: Batch, knobs: Knobs) -> Result:
    traces.append(1)  # runs at trace time only
    return search.run(params, batch, knobs)

  params = tuple(e.params for e in extractors)
  key = repr(("cloak", [e.name for e in extractors], program_config(config)))
  return CloakFn(Program(jax.jit(run), key), params, traces, Knobs.of(config))


def region_features(extractors: Sequence[Extractor]):
  """Jitted (patches, per-extractor affines) -> per-extractor [b, d] unit features."""
  extractors = tuple(extractors)

  def run(params, patches, affines):
    out = []
    for ext, p, m in zip(extractors, params, affines):
      crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(patches, m, ext.input_size)
      out.append(losses.normalize(ext.embed(p, crops)))
    return tuple(out)

  params = tuple(e.params for e in extractors)
  program = Program(jax.jit(run), repr(("features", [e.name for e in extractors])))
  return lambda patches, affines: program(params, patches, affines)


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh | None) -> Batch:
  """Places a batch with its leading axis split over the mesh's 'data' axis."""
  if mesh is None:
    return batch
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.tree.map(lambda x: jax.device_put(x, spec), batch)


def data_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices, ("data",))
