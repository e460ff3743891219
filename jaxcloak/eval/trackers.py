"""Trackers: the face recognisers a cloak must fool.

A tracker embeds the main face of each photo with an extractor and classifies
the embedding: a softmax linear probe trained with optax, a cosine kNN, an
adversarially trained probe (PGD on the probe's input features), or a
fine-tuned variant that also trains the extractor's last layers on the crops.

Extractors are the ported models (aligned with the same 5-point templates the
cloak uses) or any insightface recognition model (e.g. buffalo_l's ArcFace)
loaded through insightface's own `model_zoo.get_model`, named
`insightface:<pack name or path to .onnx>`. Features are unit-normalised.
Images are uint8 RGB photos plus [5, 2] landmarks; crops are float32 NHWC in [0, 1].
"""

from __future__ import annotations

import functools
from typing import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcloak import losses, models
from jaxcloak.faces.align import similarity_transform

INSIGHTFACE_PREFIX = "insightface:"


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def aligned_crops(images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray], size: int,
                  template: np.ndarray) -> np.ndarray:
  """[n, size, size, 3] float32 crops in [0, 1] (bilinear, zero border, as the cloak's warp)."""
  out = np.zeros((len(images), size, size, 3), np.float32)
  for i, (im, lm) in enumerate(zip(images, landmarks)):
    m = similarity_transform(np.asarray(lm, np.float64), np.asarray(template, np.float64))
    out[i] = cv2.warpAffine(im.astype(np.float32) / 255.0, np.asarray(m, np.float64),
                            (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out


class PortedEmbedder:
  """A ported jaxcloak extractor as a tracker's feature extractor."""

  def __init__(self, name: str, *, weights_dir=None, batch_size: int = 16, extractor=None):
    """Loads `name` from the registry, or wraps an already built `extractor`."""
    self.name = name
    self.extractor = extractor if extractor is not None else models.load(name, weights_dir)
    self.batch_size = batch_size
    ext = self.extractor

    @jax.jit
    def embed(params, crops):
      return losses.normalize(ext.embed(params, crops))
    self._embed = embed

  def crops(self, images, landmarks) -> np.ndarray:
    e = self.extractor
    return aligned_crops(images, landmarks, e.input_size, e.template)

  def embed_crops(self, crops: np.ndarray, params=None) -> np.ndarray:
    params = self.extractor.params if params is None else params
    out = []
    b = self.batch_size
    for start in range(0, len(crops), b):
      chunk = crops[start:start + b]
      pad = np.zeros((b,) + chunk.shape[1:], np.float32)
      pad[:len(chunk)] = chunk  # fixed batch shape: one compile per extractor
      out.append(np.asarray(self._embed(params, pad))[:len(chunk)])
    d = self.extractor.embedding_dim
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)

  def __call__(self, images, landmarks) -> np.ndarray:
    """[n, d] unit features of each image's face at the given landmarks."""
    out = []
    for start in range(0, len(images), 64):  # bounds crop memory
      out.append(self.embed_crops(self.crops(images[start:start + 64],
                                             landmarks[start:start + 64])))
    return np.concatenate(out) if out else np.zeros((0, self.extractor.embedding_dim), np.float32)


class InsightfaceEmbedder:
  """An insightface recognition model (ONNX) loaded by insightface's own model zoo.

  `spec` is what `insightface.model_zoo.get_model` accepts: a model pack name
  under `root/models` (e.g. "buffalo_l", whose recognition model is ArcFace
  w600k_r50) or a path to a recognition .onnx file. Nothing is downloaded.
  """

  def __init__(self, spec: str, *, root: str = "~/.insightface"):
    from insightface import model_zoo
    self.name = INSIGHTFACE_PREFIX + spec
    try:
      model = model_zoo.get_model(spec, root=root, download=False)
    except ValueError as e:
      if "model_task" not in str(e):
        raise
      # Manifest-backed packs name their recognition model by task.
      model = model_zoo.get_model(spec, root=root, download=False, model_task="recognition")
    if model is None or getattr(model, "taskname", None) != "recognition":
      raise ValueError(f"{spec}: no insightface recognition model found (looked in "
                       f"{root}/models and at the path itself)")
    model.prepare(ctx_id=-1)
    self.model = model

  def __call__(self, images, landmarks) -> np.ndarray:
    from insightface.utils import face_align
    size = self.model.input_size[0]
    crops = [face_align.norm_crop(np.ascontiguousarray(im[..., ::-1]), np.asarray(lm, np.float32),
                                  image_size=size) for im, lm in zip(images, landmarks)]
    if not crops:
      return np.zeros((0, self.model.output_shape[-1] or 512), np.float32)
    # get_feat takes BGR crops, as cv2 reads them (hence the channel flip above).
    return _unit(np.concatenate([self.model.get_feat(crops[i:i + 32])
                                 for i in range(0, len(crops), 32)]))


def make_embedder(spec: str, *, weights_dir=None, insightface_root: str = "~/.insightface"):
  """'dlib' | 'facenet' | 'sface' | 'insightface:<pack or .onnx>' -> embedder."""
  if spec.startswith(INSIGHTFACE_PREFIX):
    return InsightfaceEmbedder(spec[len(INSIGHTFACE_PREFIX):], root=insightface_root)
  return PortedEmbedder(spec, weights_dir=weights_dir)


# -- classifiers on features ------------------------------------------------------


def _pad_rows(n: int) -> int:
  return max(64, -(-n // 64) * 64)


def _pad_classes(c: int) -> int:
  return max(16, -(-c // 16) * 16)


@functools.partial(jax.jit, static_argnames=("steps", "pgd_steps"))
def _fit_probe(key, x, y, w, n_classes_mask, lr, weight_decay, eps, *, steps: int,
               pgd_steps: int):
  """Full-batch softmax regression with AdamW; optional PGD on the inputs (eps > 0)."""
  d, c = x.shape[1], n_classes_mask.shape[0]
  params = {"w": jax.random.normal(key, (d, c)) * 0.01, "b": jnp.zeros((c,))}
  opt = optax.adamw(lr, weight_decay=weight_decay)
  state = opt.init(params)

  def logits_fn(p, inputs):
    # Unused padded classes can never win.
    return inputs @ p["w"] * 10.0 + p["b"] + jnp.where(n_classes_mask, 0.0, -1e9)

  def loss_fn(p, inputs):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, inputs), y)
    return jnp.sum(ce * w) / jnp.sum(w)

  def attack(p, inputs):
    # L2 PGD within eps of each training feature (Madry et al. 2018), in feature space.
    def step(delta, _):
      g = jax.grad(lambda dl: loss_fn(p, inputs + dl))(delta)
      g = g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), 1e-12)
      delta = delta + 2.5 * eps / pgd_steps * g
      norm = jnp.linalg.norm(delta, axis=1, keepdims=True)
      return delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-12)), None
    delta, _ = jax.lax.scan(step, jnp.zeros_like(inputs), None, length=pgd_steps)
    return inputs + jax.lax.stop_gradient(delta)

  def body(carry, _):
    p, s = carry
    inputs = attack(p, x) if pgd_steps > 0 else x
    g = jax.grad(loss_fn)(p, inputs)
    updates, s = opt.update(g, s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.lax.scan(body, (params, state), None, length=steps)
  return params


@jax.jit
def _probe_logits(params, x, n_classes_mask):
  return x @ params["w"] * 10.0 + params["b"] + jnp.where(n_classes_mask, 0.0, -1e9)


class LinearProbe:
  """Softmax linear classifier on unit features (optionally adversarially trained).

  Args:
    adversarial_eps: L2 radius of the PGD attack on the probe's input features
      during training (0 = normal training). The attack is in feature space,
      not on the crop pixels.
  """

  def __init__(self, *, steps: int = 300, learning_rate: float = 0.05,
               weight_decay: float = 1e-4, adversarial_eps: float = 0.0, pgd_steps: int = 5,
               seed: int = 0):
    self.steps, self.lr, self.wd = steps, learning_rate, weight_decay
    self.eps, self.pgd_steps = adversarial_eps, pgd_steps if adversarial_eps > 0 else 0
    self.seed = seed

  def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "LinearProbe":
    n, d = x.shape
    rows, cols = _pad_rows(n), _pad_classes(n_classes)
    xp = np.zeros((rows, d), np.float32)
    xp[:n] = x
    yp = np.zeros((rows,), np.int32)
    yp[:n] = y
    # Inverse class frequency weights, so a user's few photos count as much as a big class.
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    wp = np.zeros((rows,), np.float32)
    wp[:n] = 1.0 / counts[y]
    self.mask = np.arange(cols) < n_classes
    self.params = _fit_probe(jax.random.key(self.seed), xp, yp, wp, self.mask, self.lr, self.wd,
                             float(self.eps), steps=self.steps, pgd_steps=self.pgd_steps)
    return self

  def predict(self, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
      return np.zeros((0,), np.int64)
    rows = _pad_rows(len(x))
    xp = np.zeros((rows, x.shape[1]), np.float32)
    xp[:len(x)] = x
    return np.asarray(jnp.argmax(_probe_logits(self.params, xp, self.mask), axis=1))[:len(x)]


class KNN:
  """Cosine k-nearest-neighbour vote (ties go to the larger summed similarity)."""

  def __init__(self, k: int = 3):
    self.k = k

  def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "KNN":
    self.x, self.y, self.n_classes = _unit(x), np.asarray(y), n_classes
    return self

  def predict(self, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
      return np.zeros((0,), np.int64)
    sims = _unit(x) @ self.x.T  # [m, n]
    k = min(self.k, self.x.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out = np.zeros((len(x),), np.int64)
    for i in range(len(x)):
      votes = np.zeros((self.n_classes,))
      score = np.zeros((self.n_classes,))
      for j in idx[i]:
        votes[self.y[j]] += 1
        score[self.y[j]] += sims[i, j]
      out[i] = int(np.lexsort((score, votes))[-1])
    return out


def make_classifier(kind: str, *, seed: int = 0, probe_steps: int = 300, knn_k: int = 3,
                    adversarial_eps: float = 0.1, pgd_steps: int = 5):
  if kind == "probe":
    return LinearProbe(steps=probe_steps, seed=seed)
  if kind == "knn":
    return KNN(knn_k)
  if kind == "robust":
    return LinearProbe(steps=probe_steps, seed=seed, adversarial_eps=adversarial_eps,
                       pgd_steps=pgd_steps)
  raise ValueError(f"unknown tracker kind {kind!r}")


# -- fine-tuned tracker ----------------------------------------------------------

# The last parameterised layers of each ported extractor (top-level param
# names) that the fine-tuned tracker trains; everything else stays frozen.
FINETUNE_LAYERS = {
    "dlib": ("block13", "fc"),
    "facenet": ("Bottleneck", "Bottleneck_BatchNorm"),
    "sface": ("fc1", "pre_fc1"),
}


class FineTuned:
  """Extractor's last layers plus a softmax head, trained on aligned crops with optax.

  Only for ported extractors (they are differentiable JAX models). Training is
  minibatch AdamW for `epochs` passes; the frozen layers still run forward each
  step, so this is the expensive tracker.
  """

  def __init__(self, embedder: PortedEmbedder, *, epochs: int = 3, batch_size: int = 16,
               learning_rate: float = 1e-4, seed: int = 0, layers: Sequence[str] | None = None):
    self.embedder = embedder
    self.epochs, self.batch, self.lr, self.seed = epochs, batch_size, learning_rate, seed
    name = embedder.extractor.name
    self.layers = tuple(layers) if layers is not None else FINETUNE_LAYERS.get(name, ())
    missing = [l for l in self.layers if l not in embedder.extractor.params]
    if missing or not self.layers:
      raise ValueError(f"{name}: fine-tune layers {missing or '(none)'} not in the model's params")

  def fit(self, crops: np.ndarray, y: np.ndarray, n_classes: int) -> "FineTuned":
    ext = self.embedder.extractor
    cols = _pad_classes(n_classes)
    mask_c = np.arange(cols) < n_classes
    # The head starts from the linear probe on the frozen features, so the
    # fine-tuning steps refine a working classifier instead of a random one.
    probe = LinearProbe(seed=self.seed).fit(self.embedder.embed_crops(crops), y, n_classes)
    params = {"ext": ext.params, "head": dict(probe.params)}
    # BatchNorm running statistics stay frozen even inside trained layers.
    def label(path, _):
      top, leaf = jax.tree_util.keystr(path[:1]), jax.tree_util.keystr(path[-1:])
      trained = any(top == f"['{l}']" for l in self.layers)
      return "train" if trained and leaf not in ("['mean']", "['var']") else "freeze"
    labels = {"ext": jax.tree_util.tree_map_with_path(label, ext.params),
              "head": jax.tree.map(lambda _: "train", params["head"])}
    opt = optax.multi_transform({"train": optax.adamw(self.lr, weight_decay=1e-4),
                                 "freeze": optax.set_to_zero()}, labels)
    state = opt.init(params)
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)

    def logits_fn(p, x):
      f = losses.normalize(ext.embed(p["ext"], x))
      return f @ p["head"]["w"] * 10.0 + p["head"]["b"] + jnp.where(mask_c, 0.0, -1e9)

    @jax.jit
    def step(p, s, x, yy, ww):
      def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), yy)
        return jnp.sum(ce * ww) / jnp.maximum(jnp.sum(ww), 1e-12)
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s

    rng = np.random.default_rng(self.seed)
    b = self.batch
    for _ in range(self.epochs):
      order = rng.permutation(len(crops))
      for start in range(0, len(order), b):
        idx = order[start:start + b]
        x = np.zeros((b,) + crops.shape[1:], np.float32)
        x[:len(idx)] = crops[idx]
        yy = np.zeros((b,), np.int32)
        yy[:len(idx)] = y[idx]
        ww = np.zeros((b,), np.float32)
        ww[:len(idx)] = 1.0 / counts[y[idx]]
        params, state = step(params, state, x, yy, ww)
    self.params = params
    self._logits = jax.jit(logits_fn)
    return self

  def predict(self, crops: np.ndarray) -> np.ndarray:
    out = []
    b = self.batch
    for start in range(0, len(crops), b):
      chunk = crops[start:start + b]
      x = np.zeros((b,) + crops.shape[1:], np.float32)
      x[:len(chunk)] = chunk
      out.append(np.asarray(jnp.argmax(self._logits(self.params, x), axis=1))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


class CropRobustProbe:
  """Linear probe adversarially trained against L-inf PGD on the aligned crops' pixels.

  The attack runs through the frozen extractor (the expensive, faithful
  variant of the feature-space robust probe): each round perturbs every
  training crop to maximise the current probe's loss within `eps`, and the
  probe is retrained on clean plus adversarial features.
  """

  def __init__(self, embedder: PortedEmbedder, *, eps: float = 4 / 255, pgd_steps: int = 5,
               rounds: int = 1, probe_steps: int = 300, seed: int = 0):
    self.embedder = embedder
    self.eps, self.pgd_steps, self.rounds = eps, pgd_steps, rounds
    self.probe_steps, self.seed = probe_steps, seed
    ext = embedder.extractor
    alpha = 2.5 * eps / max(1, pgd_steps)

    @jax.jit
    def attack(ext_params, head, mask, x, y, w):
      def loss(xx):
        f = losses.normalize(ext.embed(ext_params, xx))
        logits = f @ head["w"] * 10.0 + head["b"] + jnp.where(mask, 0.0, -1e9)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)

      def step(delta, _):
        g = jax.grad(lambda d: loss(jnp.clip(x + d, 0.0, 1.0)))(delta)
        return jnp.clip(delta + alpha * jnp.sign(g), -eps, eps), None
      delta, _ = jax.lax.scan(step, jnp.zeros_like(x), None, length=pgd_steps)
      return jnp.clip(x + delta, 0.0, 1.0)
    self._attack = attack

  def _adversarial(self, probe: LinearProbe, crops: np.ndarray, y: np.ndarray) -> np.ndarray:
    b = self.embedder.batch_size
    out = []
    for start in range(0, len(crops), b):
      chunk = crops[start:start + b]
      x = np.zeros((b,) + crops.shape[1:], np.float32)
      x[:len(chunk)] = chunk
      yy = np.zeros((b,), np.int32)
      yy[:len(chunk)] = y[start:start + b]
      w = (np.arange(b) < len(chunk)).astype(np.float32)
      adv = self._attack(self.embedder.extractor.params, probe.params, probe.mask, x, yy, w)
      out.append(np.asarray(adv)[:len(chunk)])
    return np.concatenate(out)

  def fit(self, crops: np.ndarray, y: np.ndarray, n_classes: int) -> "CropRobustProbe":
    feats = self.embedder.embed_crops(crops)
    probe = LinearProbe(steps=self.probe_steps, seed=self.seed).fit(feats, y, n_classes)
    for _ in range(self.rounds):
      adv = self.embedder.embed_crops(self._adversarial(probe, crops, y))
      probe = LinearProbe(steps=self.probe_steps, seed=self.seed).fit(
          np.concatenate([feats, adv]), np.concatenate([y, y]), n_classes)
    self.probe = probe
    return self

  def predict(self, crops: np.ndarray) -> np.ndarray:
    return self.probe.predict(self.embedder.embed_crops(crops))
