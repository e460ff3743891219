"""Robust surrogate training: CosFace head, L-inf PGD and the adversarial fine-tuning loop.

Per batch: L-inf PGD in [0, 1] pixel space maximising a cosine-softmax loss
over the training identities (CosFace, Wang et al. 2018: s * (cos - m at the
label)), then one optax step on the adversarial (and optionally clean) crops
(Madry et al. 2018). The whole step is one jitted function; `epsilon` is an
array argument, so no knob but the batch shape and PGD step count compiles.
Host shuffling and flips come from a NumPy generator and PGD starts from a
folded JAX key, both seeded by `RobustConfig.seed`, so a run repeats.

Crops are float32 NHWC RGB in [0, 1] inside JAX code, uint8 on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import losses

_STAT_KEYS = ("mean", "var")  # BatchNorm running statistics stay frozen


@dataclasses.dataclass(frozen=True)
class RobustConfig:
  """Knobs of one fine-tune: the training attack and loop, the held-out split and checks."""
  epsilon: float = 4 / 255  # L-inf radius of the training attack, in [0, 1] pixels
  pgd_steps: int = 3
  epochs: int = 1
  batch_size: int = 32
  learning_rate: float = 5e-5  # backbone; the head learns 50x faster
  clean_weight: float = 0.5  # loss share of the clean crops (0 = adversarial only)
  scale: float = 32.0  # CosFace s
  margin: float = 0.2  # CosFace m
  flip: bool = True  # random horizontal flips of the training crops
  holdout: float = 0.05  # share of identities kept out for the threshold and checks
  eval_steps: int = 10  # PGD steps of the held-out embedding-shift check
  seed: int = 0

  def __post_init__(self):
    if not 0.0 < self.epsilon < 0.5:
      raise ValueError(f"epsilon must be in (0, 0.5) ([0, 1] pixel units), got {self.epsilon}")
    if self.pgd_steps < 1 or self.epochs < 1 or self.batch_size < 1:
      raise ValueError("pgd_steps, epochs and batch_size must be >= 1")
    if not 0.0 <= self.clean_weight < 1.0:
      raise ValueError(f"clean_weight must be in [0, 1), got {self.clean_weight}")
    if not 0.0 <= self.holdout < 0.5:
      raise ValueError(f"holdout must be in [0, 0.5), got {self.holdout}")


# -- head, loss and attack ---------------------------------------------------------


def cosines(ext, params, x):
  """[b, c] cosine of each crop's unit embedding to each class weight."""
  f = losses.normalize(ext.embed(params["ext"], x))
  w = params["head"]
  return f @ (w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12))


def cosface_loss(cos, y, w, class_mask, *, scale: float, margin: float):
  """Weighted mean CosFace cross-entropy: softmax over s * (cos - m [label]).

  Args:
    cos: [b, c] cosines; y: [b] int labels; w: [b] row weights (0 = padding);
    class_mask: [c] bool, False for padded classes (they can never win).
  """
  logits = scale * (cos - margin * jax.nn.one_hot(y, cos.shape[1]))
  logits = jnp.where(class_mask, logits, -1e9)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-12)


def pgd(key, loss_fn, x, epsilon, steps: int):
  """L-inf PGD (Madry et al. 2018): random start, `steps` signed-gradient ascents of
  `loss_fn` (crops -> scalar), step 2.5 * epsilon / steps; result within epsilon of
  `x` and inside [0, 1]."""
  alpha = 2.5 * epsilon / steps
  delta = jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon)
  delta = jnp.clip(x + delta, 0.0, 1.0) - x

  def step(delta, _):
    g = jax.grad(lambda d: loss_fn(x + d))(delta)
    delta = jnp.clip(delta + alpha * jnp.sign(g), -epsilon, epsilon)
    return jnp.clip(x + delta, 0.0, 1.0) - x, None

  delta, _ = jax.lax.scan(step, delta, None, length=steps)
  return jax.lax.stop_gradient(x + delta)


class TrainState(NamedTuple):
  params: dict  # {"ext": extractor params, "head": [d, c] class weights}
  opt_state: optax.OptState


def make_optimizer(params, config: RobustConfig, total_steps: int):
  """Adam on the backbone (cosine decay after a short warm-up), 50x on the head;
  BatchNorm running statistics frozen."""
  warmup = max(1, min(100, total_steps // 10))
  sched = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                             max(total_steps, warmup + 1))

  def label(path, _):
    return "freeze" if getattr(path[-1], "key", None) in _STAT_KEYS else "train"

  labels = {"ext": jax.tree_util.tree_map_with_path(label, params["ext"]), "head": "head"}
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.multi_transform({"train": optax.scale_by_adam(), "head": optax.scale_by_adam(),
                             "freeze": optax.set_to_zero()}, labels),
      optax.multi_transform({"train": optax.scale_by_learning_rate(sched),
                             "head": optax.scale_by_learning_rate(
                                 lambda n: 50.0 * sched(n)),
                             "freeze": optax.identity()}, labels))


def make_train_step(ext, optimizer, class_mask: np.ndarray, config: RobustConfig):
  """jit((state, key, x [b, s, s, 3] in [0, 1], y [b], w [b], epsilon)) -> (state, metrics)."""
  mask = jnp.asarray(class_mask)
  loss_of = functools.partial(cosface_loss, class_mask=mask, scale=config.scale,
                              margin=config.margin)
  clean_weight = config.clean_weight

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state, key, x, y, w, epsilon):
    adv = pgd(key, lambda xx: loss_of(cosines(ext, state.params, xx), y, w), x, epsilon,
              config.pgd_steps)

    def loss(params):
      cos_adv = cosines(ext, params, adv)
      total = loss_of(cos_adv, y, w)
      metrics = {"adv_acc": jnp.sum((jnp.argmax(jnp.where(mask, cos_adv, -2.0), 1) == y) * w)}
      if clean_weight > 0:
        cos = cosines(ext, params, x)
        total = (1.0 - clean_weight) * total + clean_weight * loss_of(cos, y, w)
        metrics["clean_acc"] = jnp.sum((jnp.argmax(jnp.where(mask, cos, -2.0), 1) == y) * w)
      return total, metrics

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state), {"loss": value, **metrics}

  return step


def make_embed_fn(ext):
  """jit((params, crops [b, s, s, 3] in [0, 1])) -> [b, d] unit embeddings."""
  return jax.jit(lambda params, x: losses.normalize(ext.embed(params, x)))


def make_shift_attack(ext, steps: int):
  """jit((params, key, crops, epsilon)) -> [b] cosine between each crop's clean and
  attacked unit embedding, after L-inf PGD that pushes the embedding away from the
  clean one (the untargeted cloak's objective, Fawkes 1.0)."""

  @jax.jit
  def attack(params, key, x, epsilon):
    clean = jax.lax.stop_gradient(losses.normalize(ext.embed(params, x)))

    def loss(xx):
      return jnp.sum(losses.normalize(ext.embed(params, xx)) * clean)

    adv = pgd(key, lambda xx: -loss(xx), x, epsilon, steps)
    return jnp.sum(losses.normalize(ext.embed(params, adv)) * clean, axis=-1)

  return attack


# -- batches ------------------------------------------------------------------


def _batches(n: int, b: int):
  for start in range(0, n, b):
    yield np.arange(start, min(n, start + b))


def _pad_batch(crops: np.ndarray, rows: np.ndarray, b: int, *, flip=None):
  """Fixed-shape float batch from uint8 crops (padding rows zero); `flip` [len(rows)] bool."""
  x = np.zeros((b,) + crops.shape[1:], np.float32)
  x[:len(rows)] = crops[rows] / np.float32(255.0)
  if flip is not None:
    x[:len(rows)][flip] = x[:len(rows)][flip][:, :, ::-1]
  return x


def embed_all(embed, params, crops: np.ndarray, b: int) -> np.ndarray:
  out = [np.asarray(embed(params, _pad_batch(crops, r, b)))[:len(r)]
         for r in _batches(len(crops), b)]
  return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def shift_cosines(attack, params, crops: np.ndarray, epsilon: float, b: int,
                  seed: int) -> np.ndarray:
  """[n] clean-vs-attacked embedding cosine for every crop (see `make_shift_attack`)."""
  key = jax.random.key(seed)
  out = []
  for k, rows in enumerate(_batches(len(crops), b)):
    cos = attack(params, jax.random.fold_in(key, k), _pad_batch(crops, rows, b),
                 jnp.float32(epsilon))
    out.append(np.asarray(cos)[:len(rows)])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


# -- training ----------------------------------------------------------------------


def _init_head(feats: np.ndarray, labels: np.ndarray, n_classes: int, cols: int) -> np.ndarray:
  """[d, cols] class weights: each identity's normalised clean feature centroid, so the
  adversarial steps refine a working classifier instead of a random one."""
  w = np.zeros((feats.shape[1], cols), np.float32)
  np.add.at(w.T, labels, feats)
  w[:, n_classes:] = 1.0  # padded classes: masked out, any non-zero vector
  return w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)


def fit(ext, crops: np.ndarray, labels: np.ndarray, n_classes: int, config: RobustConfig, *,
        log: Callable[[str], None] = print) -> tuple[dict, list[dict]]:
  """PGD adversarial training of `ext` on uint8 crops with dense labels in [0, n_classes).

  Returns:
    (tuned extractor params, one metrics dict per epoch).
  """
  n, b = len(crops), config.batch_size
  cols = -(-n_classes // 16) * 16  # padded class count: fewer distinct compiles
  class_mask = np.arange(cols) < n_classes
  embed = make_embed_fn(ext)
  head = _init_head(embed_all(embed, ext.params, crops, b), labels, n_classes, cols)
  params = {"ext": ext.params, "head": jnp.asarray(head)}
  steps_per_epoch = -(-n // b)
  optimizer = make_optimizer(params, config, steps_per_epoch * config.epochs)
  # Own copies: the step donates its state, and ext.params must survive.
  state = TrainState(jax.tree.map(jnp.array, params), optimizer.init(params))
  step = make_train_step(ext, optimizer, class_mask, config)
  rng = np.random.default_rng(config.seed)
  key = jax.random.key(config.seed)
  eps = jnp.float32(config.epsilon)
  t0, done, history = time.time(), 0, []
  for epoch in range(config.epochs):
    order = rng.permutation(n)
    sums = {"loss": 0.0, "adv_acc": 0.0, "clean_acc": 0.0}
    for k, rows in enumerate(_batches(n, b)):
      idx = order[rows]
      flip = rng.random(len(idx)) < 0.5 if config.flip else None
      x = _pad_batch(crops, idx, b, flip=flip)
      y = np.zeros((b,), np.int32)
      y[:len(idx)] = labels[idx]
      w = (np.arange(b) < len(idx)).astype(np.float32)
      state, m = step(state, jax.random.fold_in(key, epoch * steps_per_epoch + k), x, y, w, eps)
      m = jax.device_get(m)
      sums["loss"] += float(m["loss"]) * len(idx)
      for a in ("adv_acc", "clean_acc"):
        sums[a] += float(m.get(a, 0.0))
      done += 1
      if done == 1 or k % 20 == 19 or k == steps_per_epoch - 1:
        rate = (time.time() - t0) / done
        left = rate * (steps_per_epoch * config.epochs - done)
        log(f"epoch {epoch + 1}/{config.epochs} batch {k + 1}/{steps_per_epoch} "
            f"loss {float(m['loss']):.3f} {rate:.2f} s/batch, {left / 60:.1f} min left")
    history.append({"epoch": epoch + 1, **{a: round(v / n, 4) for a, v in sums.items()}})
    log(f"epoch {epoch + 1}: {json.dumps(history[-1])}")
  return jax.device_get(state.params["ext"]), history
