"""The cloak's objective, defined once: the compiled loop minimises it, and the
written-file decisions (is a refine round kept?) judge by it.

For each ensemble member e, d_e is the squared distance of the face's unit
features to the target's (targeted) or to the original face's (untargeted).
"mean" (Fawkes) scores sum_e w_e d_e, negated when untargeted. "balanced"
puts every member on a common scale first, its share of the start distance
still to cover (targeted) or its distance in units of its same-person
threshold (untargeted), and takes a soft maximum over members, so the member
hardest to move is not neglected. Lower is better in every case.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxcloak import losses
from jaxcloak.config import CloakConfig


@dataclasses.dataclass(frozen=True)
class Objective:
  weights: jax.Array  # [m] member weights, summing to 1
  same_person: jax.Array  # [m] squared unit-sphere distance at each member's threshold
  targeted: bool
  balanced: bool
  temperature: float

  @classmethod
  def of(cls, config: CloakConfig, extractors) -> "Objective":
    weights = jnp.asarray(config.weights, jnp.float32)
    return cls(weights / jnp.sum(weights),
               jnp.asarray([e.same_person_sq_distance for e in extractors], jnp.float32),
               config.mode == "targeted", config.ensemble == "balanced",
               config.ensemble_temperature)

  def __call__(self, d: jax.Array, start: jax.Array) -> jax.Array:
    """[m, b] squared member distances (and theirs at the start) -> [b] objective."""
    if not self.balanced:
      mean = self.weighted(d)
      return mean if self.targeted else -mean
    terms = d / jnp.maximum(start, 1e-6) if self.targeted else -d / self.same_person[:, None]
    return losses.soft_maximum(terms.T, self.weights, self.temperature)

  def weighted(self, d: jax.Array) -> jax.Array:
    """[m, b] -> [b] the members' weighted mean."""
    return jnp.tensordot(self.weights, d, axes=1)


def member_sq_distances(feats: Sequence[jax.Array], refs: Sequence[jax.Array]) -> jax.Array:
  """Per member [..., b, d] features (any leading view axes) vs [b, d] references ->
  [m, b] squared distances, averaged over the views."""
  d = [jnp.sum(jnp.square(f - r), axis=-1) for f, r in zip(feats, refs)]
  return jnp.stack([x.reshape(-1, x.shape[-1]).mean(axis=0) for x in d])
