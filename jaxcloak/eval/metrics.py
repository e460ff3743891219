"""Protection and detection metrics, with the counts behind every rate.

PSR (protection success rate, Fawkes §5): the share of the user's clean test
photos that the tracker does not classify as the user. Cloak detection (§8.2):
separations measured in standard deviations of the same quantity over normal
(uncloaked) classes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rate:
  k: int  # numerator count
  n: int  # denominator count

  @property
  def value(self) -> float:
    return self.k / self.n if self.n else float("nan")

  def __str__(self) -> str:
    return f"{self.value:.2f} ({self.k}/{self.n})"


def psr(predictions: np.ndarray, user_label: int) -> Rate:
  """Share of the user's test photos not classified as the user."""
  p = np.asarray(predictions)
  return Rate(int(np.sum(p != user_label)), int(p.size))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> Rate:
  p, y = np.asarray(predictions), np.asarray(labels)
  return Rate(int(np.sum(p == y)), int(p.size))


def summarize(values: Sequence[float]) -> dict:
  """Mean, sample std and count of per-user values (NaNs dropped)."""
  v = np.asarray([x for x in values if x == x], np.float64)
  if v.size == 0:
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "n": int(v.size)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 images (inf if identical)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95, draws: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean over units (users), NaNs dropped."""
  v = np.asarray([x for x in values if x == x], np.float64)
  if v.size == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = v[rng.integers(0, v.size, (draws, v.size))].mean(axis=1)
  tail = (1.0 - level) / 2 * 100
  return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def unit_centroid(x: np.ndarray) -> np.ndarray:
  """The unit-length mean direction of unit features [n, d]."""
  c = np.asarray(x, np.float64).mean(axis=0)
  return c / max(np.linalg.norm(c), 1e-12)


def gap_closed(clean: np.ndarray, cloaked: np.ndarray, own: np.ndarray,
               others: np.ndarray) -> float:
  """The share of the way to the nearest other identity that a cloak moved a
  person's photos.

  In cosine similarity to unit centroids, averaged over the photos first:
  (clean-to-own minus cloaked-to-own) over (clean-to-own minus
  clean-to-nearest-other). 0 = not moved off the person, 1 = as close to the
  person as the nearest other identity is; a tracker's PSR rises only as this
  nears 1. A ratio of means, not a mean of ratios: a photo already nearly as
  close to another identity would divide by almost nothing.

  Args:
    clean, cloaked: [n, d] features of the same photos before and after.
    own: [d] unit centroid of the person; others: [k, d] of the other identities.
  """
  unit = lambda a: np.asarray(a, np.float64) / np.linalg.norm(a, axis=-1, keepdims=True)
  clean, cloaked = unit(clean), unit(cloaked)
  to_own, after = clean @ own, cloaked @ own
  nearest = (clean @ np.asarray(others, np.float64).T).max(axis=1)
  return float((to_own - after).mean() / max((to_own - nearest).mean(), 1e-6))


def centroid(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float64).mean(axis=0)


def zscore(value: float, reference: Sequence[float]) -> float:
  ref = np.asarray(reference, np.float64)
  if ref.size < 2:
    return float("nan")
  sd = ref.std(ddof=1)
  return float((value - ref.mean()) / sd) if sd > 0 else float("nan")


def target_proximity(cloaked: np.ndarray, target: np.ndarray,
                     others: Sequence[np.ndarray]) -> dict:
  """§8.2 detection without originals.

  Distance between the cloaked class's centroid and the target class's
  centroid, compared with the centroid distances between every pair of
  normal classes. `sigma` > 0 means the pair is closer than normal pairs by
  that many standard deviations (the paper flags ~3 as detectable).

  Args:
    cloaked: [n, d] features of the user's cloaked photos.
    target: [m, d] features of the target identity's photos.
    others: per normal class [n_i, d] features.
  """
  d = float(np.linalg.norm(centroid(cloaked) - centroid(target)))
  cs = [centroid(o) for o in others if len(o)]
  pairs = [float(np.linalg.norm(cs[i] - cs[j])) for i in range(len(cs))
           for j in range(i + 1, len(cs))]
  z = zscore(d, pairs)
  return {"distance": d, "normal_mean": float(np.mean(pairs)) if pairs else float("nan"),
          "normal_std": float(np.std(pairs, ddof=1)) if len(pairs) > 1 else float("nan"),
          "normal_pairs": len(pairs), "sigma": -z}


def two_means(x: np.ndarray, *, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic 2-means: returns (labels [n], centroids [2, d]).

  Starts from the two points at the extremes of the first principal axis.
  """
  x = np.asarray(x, np.float64)
  if len(x) < 2:
    return np.zeros(len(x), np.int64), np.stack([x.mean(0), x.mean(0)])
  xc = x - x.mean(0)
  axis = np.linalg.svd(xc, full_matrices=False)[2][0]
  proj = xc @ axis
  c = np.stack([x[np.argmin(proj)], x[np.argmax(proj)]])
  labels = np.zeros(len(x), np.int64)
  for _ in range(iters):
    d = np.linalg.norm(x[:, None] - c[None], axis=-1)
    new = np.argmin(d, axis=1)
    for k in range(2):
      if np.any(new == k):
        c[k] = x[new == k].mean(0)
    if np.array_equal(new, labels) and _ > 0:
      break
    labels = new
  return labels, c


def two_means_separation(x: np.ndarray) -> float:
  _, c = two_means(x)
  return float(np.linalg.norm(c[0] - c[1]))


def cluster_split(user: np.ndarray, others: Sequence[np.ndarray],
                  cloaked_mask: np.ndarray | None = None) -> dict:
  """§8.2 detection with originals: 2-means on the user's class.

  The separation of the two cluster centroids in the user's class (cloaked
  plus clean photos), compared with the same separation in each normal class.
  `sigma` > 0 means the user's class splits wider than normal classes by that
  many standard deviations. With `cloaked_mask`, also reports how well the
  clusters recover which photos were cloaked (purity, 0.5 = chance).
  """
  sep = two_means_separation(user)
  ref = [two_means_separation(o) for o in others if len(o) >= 2]
  out = {"separation": sep, "normal_mean": float(np.mean(ref)) if ref else float("nan"),
         "normal_std": float(np.std(ref, ddof=1)) if len(ref) > 1 else float("nan"),
         "normal_classes": len(ref), "sigma": zscore(sep, ref)}
  if cloaked_mask is not None:
    labels, _ = two_means(user)
    m = np.asarray(cloaked_mask, bool)
    agree = float(np.mean(labels == m))
    out["purity"] = max(agree, 1.0 - agree)
  return out
