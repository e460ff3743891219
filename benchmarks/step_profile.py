"""Where one cloak step's time goes: the networks' own passes vs warp, SSIM, JPEG and views.

  .venv/bin/python benchmarks/step_profile.py [--presets low,mid] [--batch 8] [--photos 24]
                                              [--trace DIR]

For each preset with its default models, on real faces (../shared/data/faces,
the most common region bucket):
- the step: the compiled loop run for `--steps-long` and `--steps-short` steps;
  their difference per step is one step as the loop runs it (forward, views,
  input gradient, penalty, optimiser update), without the work outside the loop;
- XLA's FLOPs of one step (forward + input gradient, `cloak.step_flops`) and
  the fraction of this run's measured f32 matmul peak the step reaches;
- each piece of the step timed alone, forward plus gradient with respect to its
  input, on the shapes the loop gives it: every model's network on its crops
  (plain view plus the preset's views), the warps into those crops, the JPEG
  simulation of the patch, DSSIM with the block map, and the pixel views; the
  rest ("other": the loop's bookkeeping, the optimiser, the fusion the pieces
  lose when cut apart) is the step minus their sum.
One JSON line per (preset, piece) with its milliseconds and share of the step.
With `--trace DIR`, also a jax.profiler trace of the long run (Perfetto,
TensorBoard) and one line per HLO op kind with its share of the op time XLA
recorded (convolutions, dots, gathers/scatters of the warp, fusions, ...).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import time
from pathlib import Path

from _common import emit, load_faces, machine, matmul_peak, time_call

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cloak import face_regions, make_batches, step_flops  # noqa: E402
from jaxcloak import jpeg, losses, models  # noqa: E402
from jaxcloak import views as views_lib  # noqa: E402
from jaxcloak.config import preset  # noqa: E402
from jaxcloak.faces.align import warp_affine  # noqa: E402
from jaxcloak.optimize import make_cloak_fn, region_features  # noqa: E402


def grad_of(fn):
  """jit(value and gradient) of sum(fn(x)) with respect to x."""
  return jax.jit(jax.value_and_grad(lambda x, *a: jnp.sum(fn(x, *a))))


def loop_step_ms(extractors, config, batch, short: int, long: int, trace: Path | None = None
                 ) -> tuple[float, float]:
  """Milliseconds per loop step (long minus short run), and the long run's ms."""
  times = {}
  fn = make_cloak_fn(extractors, config)
  compiled = fn.fn.lower(fn.params, batch, fn.knobs).compile()  # the step count is an argument
  for steps in (short, long):
    knobs = fn.knobs._replace(steps=np.int32(steps))
    times[steps] = time_call(compiled, fn.params, batch, knobs, min_reps=2, min_seconds=0.5)
  if trace is not None:
    with jax.profiler.trace(str(trace)):
      jax.block_until_ready(compiled(fn.params, batch, knobs))
  return 1e3 * (times[long] - times[short]) / (long - short), 1e3 * times[long]


def hlo_op_shares(trace: Path, top: int = 15) -> list[tuple[str, float, float]]:
  """(HLO op, ms, share of all op time) of the newest trace under `trace`, largest first.

  XLA CPU records one event per executed op (thunk) with its `hlo_op` name;
  numbered instances (fusion.12, fusion.40) are summed under one name only
  when they are the same kind (the name before the dot).
  """
  newest = max(trace.glob("plugins/profile/*/*.trace.json.gz"), key=lambda f: f.stat().st_mtime)
  ms = collections.Counter()
  for e in json.load(gzip.open(newest))["traceEvents"]:
    op = e.get("args", {}).get("hlo_op")
    if e.get("ph") == "X" and op:
      ms[op.split(".")[0]] += e["dur"] / 1e3
  total = sum(ms.values())
  return [(op, t, t / total) for op, t in ms.most_common(top)]


def pieces(extractors, config, batch) -> dict[str, float]:
  """Milliseconds of each piece, forward + input gradient, on the loop's shapes."""
  x = jnp.asarray(batch.patches)
  n_crops = 1 + config.views + len(config.blur_sigmas)
  out = {}
  for k, e in enumerate(extractors):
    m = jnp.asarray(batch.affines[k])
    crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(x, m, e.input_size)
    many = jnp.concatenate([crops] * n_crops)
    net = grad_of(lambda c, p, e=e: losses.normalize(e.embed(p, c)))
    out[f"network:{e.name}"] = 1e3 * time_call(lambda c: net(c, e.params), many)
    warp = grad_of(lambda x, m, e=e: jax.vmap(warp_affine, in_axes=(0, 0, None))(
        x, m, e.input_size))
    n_warps = 1 + (config.views if "affine" in config.view_kinds else 0)
    out[f"warp:{e.name}"] = n_warps * 1e3 * time_call(warp, x, m)
    if config.views:
      kinds = tuple(v for v in config.view_kinds if v != "affine")
      key = jax.random.key(0)
      pv = grad_of(lambda c: views_lib.apply_pixel_views(key, c, kinds))
      out[f"views:{e.name}"] = config.views * 1e3 * time_call(pv, crops)
  if batch.jpeg is not None:
    jp = grad_of(lambda x: jpeg.apply(x, batch.jpeg))
    out["jpeg"] = 1e3 * time_call(jp, x)
  block = losses.block_size(x.shape[1])
  masks = jnp.asarray(batch.masks)
  vis = grad_of(lambda y: sum(jnp.sum(t) for t in losses.visibility(y, x, masks, block)))
  out["ssim"] = 1e3 * time_call(vis, x * 0.99 + 0.005)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="low,mid")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--photos", type=int, default=24)
  parser.add_argument("--jpeg-quality", type=int, default=75,
                      help="the simulated encode (LFW's own quality); 0: none")
  parser.add_argument("--steps-short", type=int, default=4)
  parser.add_argument("--steps-long", type=int, default=16)
  parser.add_argument("--trace", type=Path, metavar="DIR",
                      help="also write a jax.profiler trace of each preset's long loop run "
                           "(open in Perfetto or TensorBoard's profile plugin)")
  args = parser.parse_args()
  peak = matmul_peak()
  emit(bench="step_profile", kind="matmul_peak", gflops_per_s=peak / 1e9, **machine())
  photos = load_faces(args.photos)
  for name in args.presets.split(","):
    config = preset(name, batch_size=args.batch)
    extractors = [models.load(n) for n in config.extractors]
    regions, bucket = face_regions(photos, extractors)
    feats = region_features(extractors)(
        np.stack([r.patch for r in regions]),
        [np.stack([r.affines[k] for r in regions]) for k in range(len(extractors))])
    targets = [np.roll(np.asarray(f), -1, axis=0) for f in feats]
    batch = make_batches(regions[:args.batch], extractors, [t[:args.batch] for t in targets],
                         args.batch, config.budget, args.jpeg_quality or None)[0]
    if config.local_budget is not None:
      batch = batch._replace(local_budgets=np.full((args.batch,), config.local_budget,
                                                   np.float32))
    t = time.perf_counter()
    step_ms, run_ms = loop_step_ms(extractors, config, batch, args.steps_short, args.steps_long,
                                   trace=args.trace and args.trace / name)
    flops = step_flops(extractors, batch)
    parts = pieces(extractors, config, batch)
    other = step_ms - sum(parts.values())
    common = dict(bench="step_profile", preset=name, extractors="+".join(config.extractors),
                  views=config.views, batch=args.batch, bucket=bucket,
                  jpeg_quality=args.jpeg_quality or None)
    emit(**common, piece="step", ms=step_ms, run_ms_long=run_ms,
         xla_gflops_per_step=flops / 1e9 if flops else None,
         # The step's XLA FLOPs (plain view) over its time, against the matmul peak;
         # views add network passes the plain-view count leaves out.
         peak_fraction=flops / (step_ms / 1e3) / peak if flops else None,
         seconds=time.perf_counter() - t)
    for piece, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
      emit(**common, piece=piece, ms=ms, share=ms / step_ms)
    emit(**common, piece="other", ms=other, share=other / step_ms)
    if args.trace:  # the long run as XLA executed it, per HLO op kind
      for op, ms, share in hlo_op_shares(args.trace / name):
        emit(**common, hlo_op=op, ms_in_run=ms, share_of_op_time=share)


if __name__ == "__main__":
  main()
