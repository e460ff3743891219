"""The one interface every ported face-recognition model exposes.

Images are float32 NHWC RGB in [0, 1]. `embed(params, crops)` takes crops at
`input_size` already aligned to `template` and returns [b, d] embeddings; it
runs the model's own `preprocess`, so gradients flow from the embedding back
to the [0, 1] pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcloak import programs, weights


@dataclasses.dataclass(frozen=True)
class Extractor:
  name: str
  input_size: int  # square crop side in pixels
  template: np.ndarray  # [5, 2] (x, y) crop-pixel positions of the 5 YuNet landmarks
  preprocess: Callable[[jax.Array], jax.Array]  # [b, s, s, 3] in [0, 1] -> network input
  apply: Callable[[Any, jax.Array], jax.Array]  # (params, network input) -> [b, d]
  params: Any
  embedding_dim: int = 128
  # Cosine similarity of unit embeddings above which two faces are the same
  # person: the 2-fold best threshold of benchmarks/verification.py (LFW pairs).
  same_person_cosine: float = 0.5

  @property
  def same_person_sq_distance(self) -> float:
    """The threshold as a squared L2 distance of unit embeddings (2 - 2 cos)."""
    return 2.0 - 2.0 * self.same_person_cosine

  @property
  def same_person_distance(self) -> float:
    return self.same_person_sq_distance ** 0.5

  def embed(self, params, crops: jax.Array) -> jax.Array:
    """[b, s, s, 3] in [0, 1] -> [b, d] raw (unnormalised) embeddings."""
    return self.apply(params, self.preprocess(crops))


def load_flax(name: str, model, *, input_size: int, template: np.ndarray, preprocess,
              embedding_dim: int, same_person_cosine: float, weights_dir=None,
              what: str | None = None) -> Extractor:
  """A ported Flax model's Extractor from its converted weights.

  The param tree is checked against the model's own init shapes (missing,
  unexpected or misshapen keys are listed), and a missing file names the
  fetch command.
  """
  shapes = programs.shapes(f"{type(model).__module__}.{model!r}.init", model.init, jax.random.key(0),
                           jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
                           )["params"]
  expected = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  loaded = weights.unflatten(weights.load_arrays(name, weights_dir))
  params = weights.merge_params(expected, loaded, what or name)
  return Extractor(name=name, input_size=input_size, template=template, preprocess=preprocess,
                   apply=lambda p, x: model.apply({"params": p}, x),
                   params=jax.tree.map(jnp.asarray, params), embedding_dim=embedding_dim,
                   same_person_cosine=same_person_cosine)
