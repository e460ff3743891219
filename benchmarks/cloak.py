"""Cloak throughput: faces/s of the compiled optimisation per preset, extractor and batch size.

  .venv/bin/python benchmarks/cloak.py [--presets low,mid,high] [--extractors dlib,facenet]
                                       [--batches 1,8,32] [--faces N]
                                       [--fawkes [--fawkes-photos 4] [--fawkes-only]]

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

`--fawkes` (per preset in --presets; `--fawkes-only` skips the above) times
the official Fawkes 1.0.4 against jaxcloak end to end per photo (load,
detection, optimisation, writing) on the same --fawkes-photos photos, both
untargeted with FaceNet: Fawkes via benchmarks/fawkes_peer.py in .venv-ref
(its own MTCNN, crops, mode settings, Adadelta loop and PNG output, one photo
per call as its CLI; FaceNet patched in for its downloaded extractor), and
jaxcloak's `cloak_photos` (as `jaxcloak cloak --mode untargeted --extractors
facenet --user bench --batch-size min(N, 8)`), called twice so the second,
compiled call gives the steady state. Lines: one per side (s/photo wall and
process CPU, first call or photo, faces, load average) and the ratio Fawkes /
jaxcloak (steady wall, steady CPU, and with jaxcloak's compiling call).

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

`--fawkes --fawkes-only --presets low`, 2026-11-27, same 2 shared cores (an
eval job running; load average 6.1 at the start, 4.9 at the end), 4 photos
(George_W_Bush/228, Hans_Blix/20, John_Ashcroft/43, Tiger_Woods/5), one face
each, all cloaked and written by both:

  side      s/photo wall  CPU s/photo  first call / photo  setup s
  jaxcloak      7.93          7.75       83.8 s for all 4     2.3   (compile ~52 s; batch 4)
  fawkes       78.3          75.1        78.0 s (photo 1)      3.4   (75.4-80.5 s per photo)

Fawkes / jaxcloak: 9.9x wall, 9.7x CPU in the steady state; 3.7x counting
jaxcloak's compiling call. Not equal cloaks: jaxcloak's mean DSSIM was 0.0012
(Adam, aims at 0.9 x 0.004); Fawkes' own DSSIM was not measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FACES, ROOT, emit, load_faces, machine, matmul_peak, memory, xla_flops

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
  return jpeg.JpegSpec(np.tile(luma, (b, 1, 1)), np.tile(chroma, (b, 1, 1)),
                       np.full((b,), sub, np.int32), np.ones((b,), bool))


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
  compiled = fn.fn.lower(fn.params, batches[0]).compile()
  compile_s = time.perf_counter() - t
  flops = step_flops(extractors, batches[0])
  seconds, cpu, steps = 0.0, 0.0, []
  for batch in batches:
    t, c = time.perf_counter(), time.process_time()
    res = jax.block_until_ready(compiled(fn.params, batch))
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


FAWKES_PYTHON = ROOT / ".venv-ref" / "bin" / "python"


def face_paths(n: int, seed: int = 0) -> list[Path]:
  """n photo paths from ../shared/data/faces, picked by `load_faces`' rule."""
  paths = sorted(FACES.glob("*/*.jpg"))
  picks = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
  return [paths[i] for i in sorted(picks)]


def jaxcloak_side(paths, preset_name, out: Path) -> dict:
  """`jaxcloak cloak --preset P --extractors facenet --mode untargeted --user bench`, twice."""
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import cloak_photos
  # Batch min(N, 8): a full batch as in bulk use; 4 photos in the default 8 would
  # spend half of each step on padding.
  config = preset(preset_name, mode="untargeted", extractors=("facenet",),
                  batch_size=min(len(paths), 8))
  # One user, so the photos share batches (as with --user); names keep the identity
  # because LFW's file names repeat across identities.
  photos = [(p, f"{p.parent.name}_{p.name}", "bench") for p in paths]
  t, c = time.perf_counter(), time.process_time()
  cloaker = Cloaker(config)
  rec = dict(setup_s=time.perf_counter() - t, setup_cpu_s=time.process_time() - c)
  runs = []
  for k in range(2):  # the first call also compiles (detector, features, cloak loop)
    t, c, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    summary = cloak_photos(cloaker, photos, out / f"jaxcloak{k}", progress=False,
                           log=lambda s: print(s, file=sys.stderr))
    runs.append((time.perf_counter() - t, time.process_time() - c, load, summary))
  (first, first_cpu, _, _), (wall, cpu, load, summary) = runs
  n = len(paths)
  rec.update(photos=n, faces=summary["faces"], faces_cloaked=summary["faces_cloaked"],
             mean_dssim=summary["mean_dssim"], batch=cloaker.batch_size,
             first_call_s=first, first_call_cpu_s=first_cpu,
             seconds_per_photo=wall / n, cpu_seconds_per_photo=cpu / n,
             # The first call minus a steady one: compilation (and one-off setup).
             compile_s=first - wall, loadavg_start=load, loadavg_end=os.getloadavg()[0])
  return rec


def fawkes_side(paths, preset_name, out: Path) -> dict:
  """benchmarks/fawkes_peer.py in the TensorFlow venv; its summary JSON line."""
  steps = preset(preset_name).steps
  cmd = [str(FAWKES_PYTHON), str(ROOT / "benchmarks" / "fawkes_peer.py"), "--mode", preset_name,
         "--out", str(out / "fawkes"), *map(str, paths)]
  load = os.getloadavg()[0]
  log = out / "fawkes.log"
  with open(log, "w") as err:  # TF and Fawkes' progress bars: kept out of the JSON lines
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                          timeout=300 + 6 * steps * len(paths))
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  summary = [l for l in lines if l.get("summary")]
  if proc.returncode or not summary:
    tail = log.read_text()[-1500:]
    raise RuntimeError(f"fawkes_peer.py exited {proc.returncode}: {tail}")
  rec = {k: v for k, v in summary[0].items() if k not in ("peer", "summary")}
  rec["per_photo_s"] = [round(l["seconds"], 2) for l in lines if not l.get("summary")]
  rec.update(loadavg_start=load, loadavg_end=os.getloadavg()[0])
  return rec


def compare_fawkes(preset_name: str, n: int) -> None:
  """Fawkes 1.0.4 and jaxcloak, both untargeted with FaceNet, end to end on the same photos."""
  if not FAWKES_PYTHON.exists() or not FACES.exists():
    emit(bench="cloak", peer="fawkes", preset=preset_name, status="not run",
         why=f"needs {FAWKES_PYTHON} with fawkes==1.0.4 (see benchmarks/fawkes_peer.py) "
             f"and photos in {FACES}")
    return
  paths = face_paths(n)
  load = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix="jaxcloak-vs-fawkes-") as tmp:
    ours = jaxcloak_side(paths, preset_name, Path(tmp))
    emit(bench="cloak", side="jaxcloak", preset=preset_name, extractors="facenet",
         mode="untargeted", **ours)
    try:
      theirs = fawkes_side(paths, preset_name, Path(tmp))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
      emit(bench="cloak", peer="fawkes", preset=preset_name, status="failed", why=str(e))
      return
    emit(bench="cloak", side="fawkes", preset=preset_name, **theirs)
  emit(bench="cloak", peer="fawkes", preset=preset_name, photos=len(paths),
       files=[f"{p.parent.name}/{p.name}" for p in paths],
       # Steady state: jaxcloak after its compiling call, Fawkes after its first photo.
       ratio=theirs["steady_seconds_per_photo"] / ours["seconds_per_photo"],
       ratio_cpu=theirs["steady_cpu_seconds_per_photo"] / ours["cpu_seconds_per_photo"],
       # Everything counted: jaxcloak's compiling call, all of Fawkes' photos.
       ratio_first_call=theirs["seconds_per_photo"] / (ours["first_call_s"] / len(paths)),
       loadavg_start=load, loadavg_end=os.getloadavg(), **machine())


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
  parser.add_argument("--fawkes", action="store_true",
                      help="also the official Fawkes vs jaxcloak, per preset in --presets")
  parser.add_argument("--fawkes-photos", type=int, default=4, help="photos for --fawkes")
  parser.add_argument("--fawkes-only", action="store_true", help="skip the throughput runs")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  if args.fawkes_only:
    for preset_name in args.presets.split(","):
      compare_fawkes(preset_name, args.fawkes_photos)
    return

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
  if args.fawkes:
    for preset_name in args.presets.split(","):
      compare_fawkes(preset_name, args.fawkes_photos)


if __name__ == "__main__":
  main()
