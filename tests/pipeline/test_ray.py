"""The migrate job on a real local Ray cluster: a head and a second worker node, started with
`ray start` on loopback (token auth on), a job submitted with `ray job submit`, and
one cloak actor killed mid-job. DST is given as a file:// URL, so the workers write
through fsspec (temp object, then moved into place), as they would to a bucket, and
the manifest is numbered segments. No mocks of Ray.

Teardown kills only the processes this test started (found by the cluster's own
temp dir), never `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jaxcloak.pipeline.destination import Destination
from jaxcloak.pipeline.manifest import sha256_file
from tests.conftest import ROOT
from tests.pipeline import corpus

RAY = str(Path(sys.executable).parent / "ray")
# Pipeline mechanics, not the cloak family: per-pixel noise, as test_migrate.
FLAGS = ["--mode", "untargeted", "--extractors", "dlib", "--views", "0", "--steps", "2",
         "--perturbation", "pixels",
         "--batch-size", "4", "--max-region", "64",
         "--detect-side", "576", "--max-faces", "8", "--max-pixels", str(corpus.MAX_PIXELS),
         "--chunk", "3"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _our_processes(temp: str, gcs_port: int):
  """Processes of our cluster: those naming its temp dir or its GCS address, and children."""
  import psutil
  procs = set()
  for p in psutil.process_iter(["cmdline"]):
    try:
      args = p.info["cmdline"] or []
      if any(temp in a or a.endswith(f":{gcs_port}") for a in args):
        procs.add(p)
        procs.update(p.children(recursive=True))
    except psutil.Error:
      pass
  return procs


@pytest.fixture(scope="module")
def cluster():
  # Here, not at import: a skip at collection leaves no test for must_run to fail in CI.
  pytest.importorskip("ray")
  temp = tempfile.mkdtemp(prefix="/tmp/jcray")  # short: Ray's unix socket paths are length-limited
  port, dash, client = _free_port(), _free_port(), _free_port()
  env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
             RAY_USAGE_STATS_ENABLED="0", JAX_PLATFORMS="cpu",
             PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
  env.pop("RAY_ADDRESS", None)
  common = ["--num-cpus=1", "--disable-usage-stats", "--include-log-monitor=false"]
  try:
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                    f"--temp-dir={temp}", *common],
                   env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                    '--resources={"second_node": 1}', *common],
                   env=env, check=True, capture_output=True, timeout=120)
    yield {"env": env, "dashboard": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}"}
  finally:
    procs = _our_processes(temp, port)
    for p in procs:
      try:
        p.send_signal(signal.SIGKILL)
      except Exception:
        pass
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.must_run  # the only test of the Ray runner on a real cluster
@pytest.mark.slow  # ~60 s on 2 cores: cluster start, 4 actors loading weights and compiling
def test_ray_job_survives_a_killed_actor(cluster, tmp_path, faces_dir, jax_cache):
  src, dst, marker = tmp_path / "src", tmp_path / "dst", tmp_path / "crashed.txt"
  expected = corpus.build(src, faces_dir)
  runtime_env = {"excludes": [".venv*", ".git", "weights", "out", "reports", "*.egg-info",
                              "__pycache__", "benchmarks"]}
  cmd = [RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         sys.executable, "tests/pipeline/ray_drill_job.py", "1", str(marker), str(src), dst.as_uri(),
         "--weights-dir", str(ROOT / "weights"), "--compile-cache", str(jax_cache),
         "--ray-cloak-actors", "1", "--log-every", "5", *FLAGS]
  no_token = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
  denied = subprocess.run([RAY, "job", "list", "--address", cluster["dashboard"]],
                          env={**no_token, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=60)
  assert denied.returncode != 0  # the job server wants the cluster's token
  t0 = time.time()
  try:
    out = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, timeout=400)
  except subprocess.TimeoutExpired as e:
    raise AssertionError(f"ray job timed out; its output: {(e.stdout or b'')[-3000:]!r} "
                         f"{(e.stderr or b'')[-3000:]!r}") from None
  logs = out.stdout + out.stderr
  assert out.returncode == 0, logs[-4000:]
  summary = json.loads([l for l in logs.splitlines() if l.startswith('{"src"')][-1])
  assert summary["ray_nodes"] == 2, summary
  assert summary["actor_nodes"] == 2  # detect and cloak stages spread over both nodes
  assert "exited at chunk 2" in marker.read_text()  # the drill ran: the actor died mid-job
  assert "driver opened 0 input file(s) under SRC" in logs  # the workers read every input
  lines = list(Destination(dst.as_uri()).manifest().records())
  assert len(lines) == len(expected)  # nothing recorded twice
  got = {r["input"]: r["status"] for r in lines}
  assert got == expected  # nothing lost: the killed actor's chunk was retried
  for r in lines:
    if r["output"]:
      assert sha256_file(dst / r["output"]) == r["sha256_out"]
  print(f"ray job: {time.time() - t0:.1f} s, {summary}")
