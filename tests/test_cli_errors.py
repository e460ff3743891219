"""`jaxcloak cloak`: mistakes a person can make end in one `error:` line and exit code 2."""

import pytest

from jaxcloak.cli import main


@pytest.mark.parametrize("flags, says", [
    (["--extractors", "dlib,nosuchmodel"], "unknown extractor 'nosuchmodel'"),
    (["--extractors", "faceres", "--weights-dir", "{tmp}/empty"], "jaxcloak weights fetch faceres"),
    (["--budget", "2"], "DSSIM budget must be in (0, 1)"),
    (["--views", "-1"], "views must be >= 0"),
    (["--view-kinds", "flip,warp"], "unknown view kinds ['warp']"),
    (["--local-budget", "0"], "local_budget must be in (0, 1)"),
    (["--mode", "targeted", "--pool", "{tmp}/nopool"], "no such folder"),
])
def test_cloak_errors(tmp_path, capsys, flags, says):
  flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
  (tmp_path / "empty").mkdir()
  code = main(["cloak", "--samples", "-o", str(tmp_path / "out"), "--quiet", *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].startswith("error: ") and says in err[-1], err


def test_missing_input_path(tmp_path, capsys):
  code = main(["cloak", str(tmp_path / "nothere"), "-o", str(tmp_path / "out")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err[-1].startswith("error: ") and "nothere" in err[-1]
