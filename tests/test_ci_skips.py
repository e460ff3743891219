"""The CI rule in tests/conftest.py: with JAXCLOAK_CI=1 a skipped `must_run` test fails
(skipped in its body or in a fixture, with or without pytest-xdist); without it, it skips."""

import os

import pytest

from tests.conftest import CI_ENV, ROOT

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.fixture
def needs_something():
  pytest.importorskip("no_such_module_jaxcloak")

@pytest.mark.must_run
def test_skips_in_body():
  pytest.skip("tmpfs refused")

@pytest.mark.must_run
def test_skips_in_fixture(needs_something):
  pass

@pytest.mark.must_run
def test_runs():
  pass

def test_ordinary_skip():
  pytest.skip("optional")
"""


@pytest.fixture()
def inner(pytester, monkeypatch):
  # The inner run uses the real hook and marker, not copies of them.
  pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
  pytester.makeini("[pytest]\nmarkers =\n  must_run: as in pyproject.toml\n")
  pytester.makepyfile(test_inner=INNER)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  monkeypatch.delenv(CI_ENV, raising=False)
  return pytester


def test_must_run_skips_without_ci(inner):
  inner.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=3)


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_must_run_skip_fails_in_ci(inner, monkeypatch, xdist):
  monkeypatch.setenv(CI_ENV, "1")
  result = inner.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *xdist)
  # A skip in the body fails the test; one in a fixture fails its setup (an error).
  result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1)
  result.stdout.fnmatch_lines(["*must_run test skipped in CI (JAXCLOAK_CI is set): tmpfs refused*"])
  result.stdout.fnmatch_lines(["*must_run test skipped in CI*no_such_module_jaxcloak*"])
  assert result.ret != 0
