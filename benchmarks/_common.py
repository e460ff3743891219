"""Shared pieces of the benchmark scripts: timing, FLOPs, matmul peak, memory, JSON lines."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"


def emit(**record) -> None:
  """One JSON line on stdout (flushed, so a killed run keeps what it measured)."""
  print(json.dumps(record, default=_jsonable), flush=True)


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def machine() -> dict:
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
          "python": platform.python_version()}


def block(x):
  return jax.block_until_ready(x)


def time_call(fn, *args, min_reps: int = 3, min_seconds: float = 1.0,
              max_reps: int = 50) -> float:
  """Median seconds per call of an already-compiled `fn` (one warm-up call first)."""
  block(fn(*args))
  times = []
  start = time.perf_counter()
  while len(times) < min_reps or (time.perf_counter() - start < min_seconds
                                  and len(times) < max_reps):
    t = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def time_call_cpu(fn, *args, reps: int = 3) -> float:
  """Process CPU seconds (all threads) per call: contention-free cost on a shared machine."""
  block(fn(*args))
  c = time.process_time()
  for _ in range(reps):
    block(fn(*args))
  return (time.process_time() - c) / reps


def xla_flops(jitted, *args) -> float | None:
  """FLOPs XLA's cost analysis counts for one call (a while loop's body counts once)."""
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
  except Exception:  # cost analysis is best effort on some backends
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def matmul_peak(n: int = 2048, seconds: float = 1.0) -> float:
  """Measured f32 matmul FLOP/s of an [n, n] @ [n, n] product (the reference peak)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  t = time_call(f, a, a, min_reps=5, min_seconds=seconds)
  return 2.0 * n ** 3 / t


def memory() -> dict:
  """Peak resident memory of this process, plus device memory stats where the backend has them."""
  out = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:
    stats = None
  if stats:
    out["device_peak_mb"] = stats.get("peak_bytes_in_use", 0) / 2 ** 20
  return out


def load_faces(n: int, seed: int = 0) -> list[np.ndarray]:
  """n uint8 RGB photos from ../shared/data/faces, one identity after another."""
  from PIL import Image
  paths = sorted(FACES.glob("*/*.jpg"))
  if not paths:
    # Machines without ../shared/data (e.g. a lent GPU box): the bundled samples.
    from jaxcloak import SAMPLES_DIR
    print(f"note: no photos under {FACES}; using {SAMPLES_DIR}", file=sys.stderr)
    paths = sorted(SAMPLES_DIR.glob("*.jpg"))
  rng = np.random.default_rng(seed)
  picks = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
  return [np.asarray(Image.open(paths[i]).convert("RGB")) for i in sorted(picks)]
