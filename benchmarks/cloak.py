"""Cloak throughput: faces/s of the compiled optimisation per preset, extractor and batch size.

  .venv/bin/python benchmarks/cloak.py [--presets low,mid,high] [--extractors dlib,facenet]
                                       [--batches 1,8,32] [--faces N]

Real faces: photos from ../shared/data/faces are detected (YuNet port), cut
into face regions for the extractor(s) (`faces.regions.face_region`), and the
regions in the most common bucket (128 or 160 for these 250x250 LFW photos)
are cloaked by `optimize.make_cloak_fn`, targeted at another photo's features.
An extractor entry may combine models with '+' (e.g. dlib+facenet). For each
(preset, extractors, batch): the compile time (lower + compile), the
steady-state seconds per face over ceil(N / batch) batches of the compiled
function (N = --faces, default one batch), the loop steps run, peak memory
(ru_maxrss; device memory_stats where the backend has them), XLA's FLOPs of
one optimisation step (forward + input gradient of every extractor, warp and
DSSIM; the while loop's own cost analysis counts its body once, so the step is
lowered on its own) and the fraction of a matmul peak measured in this run.
One JSON line per measurement.

The head to head with the official Fawkes (same photos, same trackers, time and
protection) is benchmarks/peer.py.

Last seen 2026-11-27 (2 CPU cores shared with other jobs, load average 6-10:
wall figures are inflated and noisy; `cpu_seconds_per_face`, process CPU time
over all threads, is the steadier cost), bucket 160, targets another photo's
features, every face cloaked:

  preset  extractors  batch  s/face wall  CPU s/face  compile s  GFLOP/step  peak frac
  low     dlib          1       2.17        2.14         7.0        1.39       0.21
  low     dlib          8       1.15-1.61   1.09-1.13    7.4-11     11.1       0.39-0.51
  low     dlib         32       1.52        1.03        10.7        44.4       0.54
  mid     dlib          8       1.96        1.94         7.4        11.1       0.44
  high    dlib          8       3.73        3.63         7.1        11.1       0.46
  low     facenet       8       5.10        3.45        22.5        47.6       0.40

Before the layers.py rewrite of the extractors' convolutions (same machine,
same process, random 160 patches, low preset, dlib, batch 8): 6.49 s/face
wall, 4.30 CPU s/face; after: 1.56 wall, 1.00 CPU s/face. Peak memory
(ru_maxrss) 1.1-1.5 GB with dlib, 1.7 GB with facenet.
"""

from __future__ import annotations

import argparse
import collections
import time

from _common import emit, load_faces, machine, matmul_peak, memory, xla_flops

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxcloak import jpeg, losses, models  # noqa: E402
from jaxcloak.config import preset  # noqa: E402
from jaxcloak.faces.align import warp_affine  # noqa: E402
from jaxcloak.faces.detect import Detector  # noqa: E402
from jaxcloak.faces.regions import face_region  # noqa: E402
from jaxcloak.optimize import Batch, make_cloak_fn, region_features  # noqa: E402


def face_regions(photos, extractors):
  """The main (largest) face's region of every photo with a face, in the most common bucket."""
  regions = []
  for rgb, dets in zip(photos, Detector()(photos)):
    if len(dets):
      i = int(np.argmax(dets.boxes[:, 2] * dets.boxes[:, 3]))
      regions.append(face_region(rgb, dets.landmarks[i], extractors))
  bucket = collections.Counter(r.bucket for r in regions).most_common(1)[0][0]
  return [r for r in regions if r.bucket == bucket], bucket


def jpeg_spec(quality, b):
  """Every item written as a JPEG at `quality` (LFW's own: 75, 4:2:0), or None."""
  if quality is None:
    return None
  luma, chroma, sub = jpeg.tables_for_quality(quality)
  return jpeg.JpegSpec.stack([(luma, chroma, sub, True)] * b)  # as the engine builds it


def make_batches(regions, extractors, targets, b, budget, jpeg_quality=None):
  """Batches of b regions (the last padded with inactive copies)."""
  out = []
  for start in range(0, len(regions), b):
    chunk = regions[start:start + b]
    idx = [start + i for i in range(len(chunk))]
    n = len(chunk)
    chunk = chunk + [chunk[0]] * (b - n)
    idx = idx + [idx[0]] * (b - n)
    out.append(Batch(
        patches=np.stack([r.patch for r in chunk]),
        masks=np.stack([r.mask for r in chunk]),
        affines=tuple(np.stack([r.affines[k] for r in chunk]) for k in range(len(extractors))),
        targets=tuple(t[idx] for t in targets),
        budgets=np.full((b,), budget, np.float32),
        active=np.arange(b) < n, jpeg=jpeg_spec(jpeg_quality, b)))
  return out


def step_flops(extractors, batch: Batch) -> float | None:
  """XLA FLOPs of one step's value and input gradient (warp, features, DSSIM)."""
  def loss(w, batch):
    x = losses.from_tanh_space(w)
    total = 0.0
    for ext, m, t in zip(extractors, batch.affines, batch.targets):
      crops = jax.vmap(warp_affine, in_axes=(0, 0, None))(jpeg.apply(x, batch.jpeg), m,
                                                          ext.input_size)
      f = losses.normalize(ext.embed(ext.params, crops))
      total = total + jnp.sum(losses.squared_distance(f, t))
    return total + jnp.sum(losses.dssim(x, batch.patches, batch.masks))
  w = losses.to_tanh_space(jnp.asarray(batch.patches))
  return xla_flops(jax.jit(jax.value_and_grad(loss)), w, batch)


def run_one(preset_name, names, extractors, regions, targets, b, n_faces, peak, bucket,
            jpeg_quality=None):
  config = preset(preset_name, extractors=tuple(names), batch_size=b)
  fn = make_cloak_fn(extractors, config)
  order = np.arange(n_faces) % len(regions)  # repeats faces when asked for more
  batches = make_batches([regions[i] for i in order], extractors,
                         [t[order] for t in targets], b, config.budget, jpeg_quality)
  t = time.perf_counter()
  compiled = fn.fn.lower(fn.params, batches[0], fn.knobs).compile()
  compile_s = time.perf_counter() - t
  flops = step_flops(extractors, batches[0])
  seconds, cpu, steps = 0.0, 0.0, []
  for batch in batches:
    t, c = time.perf_counter(), time.process_time()
    res = jax.block_until_ready(compiled(fn.params, batch, fn.knobs))
    seconds += time.perf_counter() - t
    cpu += time.process_time() - c
    steps.append(int(np.max(np.asarray(res.steps))))
  rec = dict(bench="cloak", preset=preset_name, extractors="+".join(names), batch=b,
             steps=config.steps, views=config.views, local_budget=config.local_budget,
             jpeg_aware=jpeg_quality,
             bucket=bucket, faces=n_faces, compile_s=compile_s,
             seconds_per_face=seconds / n_faces, faces_per_s=n_faces / seconds,
             # CPU seconds (all threads) per face: on a shared machine this,
             # divided by the core count, estimates the idle-machine wall time.
             cpu_seconds_per_face=cpu / n_faces,
             loop_steps=float(np.mean(steps)), config_steps=config.steps,
             xla_gflops_per_step=flops / 1e9 if flops else None,
             peak_fraction=(flops * sum(steps) / seconds / peak) if flops else None,
             cloaked=int(np.sum(np.asarray(res.found))))
  rec.update(memory())
  emit(**rec)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="low,mid,high")
  parser.add_argument("--extractors", default="dlib,facenet",
                      help="comma-separated; combine models with '+'; 'preset': each preset's "
                           "own default ensemble (and views, caps)")
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--faces", type=int, default=0,
                      help="faces timed per setting (default: one batch)")
  parser.add_argument("--photos", type=int, default=48, help="photos read and detected")
  parser.add_argument("--jpeg", default="none",
                      help="comma list: none (raw pixels) and/or JPEG qualities whose encode "
                           "the loss simulates (the engine's default for JPEG outputs; LFW: 75)")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  peak = matmul_peak()
  emit(bench="cloak", kind="matmul_peak", gflops_per_s=peak / 1e9, **machine())
  photos = load_faces(max(args.photos, max(batches)))
  presets = args.presets.split(",")
  if args.extractors == "preset":  # each preset with its own default ensemble
    runs = [(p.extractors, [name]) for name, p in ((n, preset(n)) for n in presets)]
  else:
    runs = [(tuple(combo.split("+")), presets) for combo in args.extractors.split(",")]
  for names, run_presets in runs:
    extractors = [models.load(n) for n in names]
    regions, bucket = face_regions(photos, extractors)
    feats = region_features(extractors)(
        np.stack([r.patch for r in regions]),
        [np.stack([r.affines[k] for r in regions]) for k in range(len(extractors))])
    # Each face's target: the next face's features (another photo, usually
    # another identity), as a stand-in for a chosen pool centroid.
    targets = [np.roll(np.asarray(f), -1, axis=0) for f in feats]
    for preset_name in run_presets:
      for b in batches:
        for q in args.jpeg.split(","):
          run_one(preset_name, names, extractors, regions, targets, b, args.faces or b, peak,
                  bucket, None if q == "none" else int(q))


if __name__ == "__main__":
  main()
