"""A persistent XLA compilation cache shared by this folder's tests and their subprocesses
(the CLI run that is SIGKILLed, the Ray actors), so each shape compiles once per session."""

import pytest


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
  import jax
  d = tmp_path_factory.mktemp("jax_cache")
  jax.config.update("jax_compilation_cache_dir", str(d))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield d
  jax.config.update("jax_compilation_cache_dir", None)
