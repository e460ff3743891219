"""Target-identity selection from feature centroids (Fawkes §4, §8.2 mitigation).

Works on unit-normalised features per extractor. A candidate's distance to the
user is the weighted (over extractors) minimum over the user's photos of the L2
distance to the candidate's centroid, as Fawkes' "max over candidates of the
min distance" rule. All photos of one user share the chosen target.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class IdentityFeatures:
  """Per-identity unit features of one folder of identity subfolders."""
  names: list[str]
  features: dict[str, list[np.ndarray]]  # extractor -> per identity [n_i, d]

  def centroids(self, extractor: str) -> np.ndarray:
    """[n_identities, d] unit centroids."""
    c = np.stack([f.mean(0) for f in self.features[extractor]])
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)

  def save(self, path) -> None:
    arrays = {"names": np.array(self.names)}
    for ext, per_id in self.features.items():
      arrays[f"{ext}/features"] = np.concatenate(per_id) if per_id else np.zeros((0, 128))
      arrays[f"{ext}/counts"] = np.array([len(f) for f in per_id])
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path) -> "IdentityFeatures":
    with np.load(path, allow_pickle=False) as z:
      names = [str(n) for n in z["names"]]
      feats = {}
      for key in z.files:
        if key.endswith("/features"):
          ext = key.split("/")[0]
          splits = np.cumsum(z[f"{ext}/counts"])[:-1]
          feats[ext] = list(np.split(z[key], splits))
    return cls(names, feats)


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  index: int
  distance: float  # weighted min-distance from the user's photos to the centroid
  features: dict  # extractor -> [d] unit centroid (what the cloak moves toward)
  choice: str


def candidate_distances(user: dict[str, np.ndarray], pool: IdentityFeatures,
                        extractors, weights) -> np.ndarray:
  """[n_candidates] weighted min-over-user-photos distances to each centroid."""
  w = np.asarray(weights, np.float64) / np.sum(weights)
  total = np.zeros(len(pool.names))
  for wi, ext in zip(w, extractors):
    c = pool.centroids(ext)  # [n, d]
    d = np.linalg.norm(user[ext][:, None, :] - c[None], axis=-1)  # [m, n]
    total += wi * d.min(axis=0)
  return total


def choose_target(user: dict[str, np.ndarray], pool: IdentityFeatures, *, extractors,
                  weights, choice: str = "max", top_k: int = 5, seed: int = 0,
                  exclude: tuple[str, ...] = ()) -> Target:
  """Picks one target identity for a user.

  Args:
    user: extractor -> [m, d] unit features of the user's photos.
    choice: "max" (farthest, the paper's default), "average" (the candidate at
      the median distance, §8.2's mitigation against 2-means detection),
      "random" (uniform among the `top_k` farthest), or "near" (the unit mean
      of the `top_k` nearest centroids: several targets close to the user, as
      TIP-IM chooses them, which a cloak reaches with less change).
  """
  dist = candidate_distances(user, pool, extractors, weights)
  valid = np.array([n not in exclude and all(len(pool.features[e][i]) for e in extractors)
                    for i, n in enumerate(pool.names)])
  if not valid.any():
    raise ValueError("the target pool has no usable identity")
  idx = np.flatnonzero(valid)
  if choice == "max":
    i = idx[np.argmax(dist[idx])]
  elif choice == "average":
    i = idx[np.argmin(np.abs(dist[idx] - np.median(dist[idx])))]
  elif choice == "random":
    order = idx[np.argsort(-dist[idx])][:max(1, top_k)]
    i = np.random.default_rng(seed).choice(order)
  elif choice == "near":
    near = idx[np.argsort(dist[idx])][:max(1, top_k)]
    feats = {}
    for e in extractors:
      c = pool.centroids(e)[near].mean(axis=0)
      feats[e] = c / max(np.linalg.norm(c), 1e-12)
    return Target("+".join(pool.names[i] for i in near), int(near[0]),
                  float(np.mean(dist[near])), feats, choice)
  else:
    raise ValueError(f"unknown target choice {choice!r}")
  feats = {e: pool.centroids(e)[i] for e in extractors}
  return Target(pool.names[i], int(i), float(dist[i]), feats, choice)
