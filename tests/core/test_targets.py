"""Target selection on constructed feature clusters where the answer is known."""

import numpy as np
import pytest

from jaxcloak import targets


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _pool():
  # Candidate centroids at increasing angles from the user's direction e0.
  angles = np.deg2rad([10, 40, 70, 100, 130, 170])
  feats = []
  rng = np.random.default_rng(0)
  for a in angles:
    c = np.array([np.cos(a), np.sin(a), 0, 0])
    feats.append(_unit(c + rng.normal(0, 0.01, (5, 4))))
  return targets.IdentityFeatures([f"id{i}" for i in range(6)], {"m": feats})


def test_max_average_random_choices():
  pool = _pool()
  user = {"m": _unit(np.array([[1, 0, 0, 0], [0.99, 0.05, 0, 0]]))}
  kw = dict(extractors=("m",), weights=(1.0,))
  assert targets.choose_target(user, pool, choice="max", **kw).name == "id5"
  avg = targets.choose_target(user, pool, choice="average", **kw)
  assert avg.name in ("id2", "id3")  # the median-distance candidates
  picks = {targets.choose_target(user, pool, choice="random", top_k=2, seed=s, **kw).name
           for s in range(20)}
  assert picks == {"id4", "id5"}
  assert targets.choose_target(user, pool, choice="max", exclude=("id5",), **kw).name == "id4"


def test_near_blends_the_nearest_identities():
  pool = _pool()
  user = {"m": _unit(np.array([[1, 0, 0, 0], [0.99, 0.05, 0, 0]]))}
  t = targets.choose_target(user, pool, choice="near", top_k=2, extractors=("m",), weights=(1.0,))
  assert t.name == "id0+id1" and t.choice == "near"
  want = _unit(pool.centroids("m")[:2].mean(0))
  np.testing.assert_allclose(t.features["m"], want)
  far = targets.choose_target(user, pool, choice="max", extractors=("m",), weights=(1.0,))
  assert t.distance < far.distance


def test_target_features_are_unit_centroids():
  pool = _pool()
  user = {"m": _unit(np.array([[1, 0, 0, 0]]))}
  t = targets.choose_target(user, pool, extractors=("m",), weights=(1.0,))
  assert np.isclose(np.linalg.norm(t.features["m"]), 1.0)


def test_save_load_round_trip(tmp_path):
  pool = _pool()
  pool.save(tmp_path / "p.npz")
  back = targets.IdentityFeatures.load(tmp_path / "p.npz")
  assert back.names == pool.names
  np.testing.assert_allclose(back.centroids("m"), pool.centroids("m"))


def test_empty_pool_is_an_error():
  pool = targets.IdentityFeatures(["a"], {"m": [np.zeros((0, 4))]})
  with pytest.raises(ValueError):
    targets.choose_target({"m": _unit(np.ones((1, 4)))}, pool, extractors=("m",), weights=(1,))
