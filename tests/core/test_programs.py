"""Saved programs: a later process runs the same compiled cloak without tracing it."""

import dataclasses

import numpy as np
import pytest

from jaxcloak import programs
from jaxcloak.config import CloakConfig
from jaxcloak.optimize import make_cloak_fn
from tests.core.tiny import tiny_batch, tiny_extractor

CONFIG = CloakConfig(extractors=("tiny",), budget=0.01, steps=10, learning_rate=0.05)


@pytest.fixture
def saved(tmp_path):
  folder = tmp_path / "programs"
  programs.enable(folder)
  yield folder
  programs.enable(None)


def _run(config=CONFIG):
  fn = make_cloak_fn([tiny_extractor()], config)  # a new process builds it afresh
  return fn, fn(tiny_batch())


def test_a_later_build_loads_the_program_without_tracing_and_computes_the_same(saved):
  first, res = _run()
  assert len(first.traces) == 1 and len(list(saved.glob("*.export"))) == 1
  later, again = _run()
  assert len(later.traces) == 0
  for a, b in zip(res, again):
    if a is not None:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_config_that_changes_the_program_gets_its_own(saved):
  _run()
  other, _ = _run(dataclasses.replace(CONFIG, optimizer="mifgsm"))
  assert len(other.traces) == 1 and len(list(saved.glob("*.export"))) == 2
  same, _ = _run(dataclasses.replace(CONFIG, steps=5, seed=3))  # data fields: one program
  assert len(same.traces) == 0


def test_an_unreadable_saved_program_is_traced_again_and_replaced(saved):
  _run()
  (path,) = saved.glob("*.export")
  path.write_bytes(b"cut short")
  fn, res = _run()
  assert len(fn.traces) == 1 and np.all(np.asarray(res.found))
  assert len(_run()[0].traces) == 0


def test_with_saving_off_it_is_the_plain_jitted_function():
  fn, _ = _run()
  assert len(fn.traces) == 1
  fn(tiny_batch())
  assert len(fn.traces) == 1
