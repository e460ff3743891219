"""`jaxcloak warmup`: a later job on a large face runs the warmed loop without tracing it."""

import json
import subprocess
import sys

import pytest

from jaxcloak import SAMPLES_DIR, programs
from jaxcloak.config import preset
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.local import cloak_photos, collect_photos
from tests.conftest import ROOT


@pytest.mark.slow
def test_warmup_compiles_the_loop_a_large_face_then_runs_untraced(tmp_path):
  cache = tmp_path / "cache"
  run = subprocess.run([sys.executable, "-m", "jaxcloak", "warmup", "--preset", "low",
                        "--batch-size", "1", "--compile-cache", str(cache)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr
  assert json.loads(run.stdout)["warmup_seconds"] > 0
  assert "192-px canvas" in run.stderr  # low's max_region: where every large face goes
  try:
    programs.enable(cache / programs.SUBFOLDER)  # as a later job's process: from the disk
    config = preset("low", mode="untargeted", batch_size=1)
    cloaker = Cloaker(config)
    summary = cloak_photos(cloaker, collect_photos([SAMPLES_DIR / "biden.jpg"]), tmp_path / "out")
  finally:
    programs.enable(None)
  assert summary["faces_cloaked"] == 1  # a 453-px face, optimised on the 192 canvas
  assert len(cloaker.cloak_fn.traces) == 0


def test_warmup_refuses_a_bad_value_in_one_line(tmp_path):
  run = subprocess.run([sys.executable, "-m", "jaxcloak", "warmup", "--batch-size", "0",
                        "--compile-cache", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 2
  assert run.stderr.startswith("error:") and len(run.stderr.strip().splitlines()) == 1
