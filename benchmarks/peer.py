"""Head to head with the official Fawkes: the same photos and trackers, time and protection in one run.

  .venv/bin/python benchmarks/peer.py [--users 4] [--photos-per-user 10] [--presets low,mid]
                                      [--fawkes-modes low,mid] [--fawkes-batch 8] [--keep DIR]

Photos: the eval suite's own users, splits and tracker classes
(`jaxcloak.eval.experiments.Evaluation` on ../shared/data: --users users with
--photos-per-user photos each to cloak and at least 3 clean test photos; every
other identity's train and test photos).

Sides, each run as its user would, on the same copies of the users' photos:
- jaxcloak: `jaxcloak cloak IN --pool POOL --preset P -o OUT` as a subprocess
  with a fresh HOME (no compile cache, no pool-feature cache), then the same
  command again (both caches warm). The first run is what a new user waits,
  start-up counted; the second is the steady state. POOL is the eval's target
  pool subset (its identities and photos, linked into one folder).
- Fawkes 1.0.4: `benchmarks/fawkes_peer.py` in the TensorFlow venv .venv-ref
  (built here when missing), per mode, --fawkes-batch photos per
  `run_protection` call (its CLI's `--batch-size`); its first chunk also pays
  TF's start-up, the rest is its steady state. FaceNet stands in for Fawkes'
  downloaded extractor (see there).

Figures per side (one JSON line each): wall and CPU s/photo (first run or chunk,
steady), DSSIM and SSIMULACRA2 of the written files over each photo's main face
box (YuNet on the original; the same code for both sides), and PSR of each
side's cloaks against the eval's trackers on every ported recognizer, probe and
kNN: the tracker trains on the user's cloaked photos as written (re-detected),
every other identity's clean photos, and classifies the user's clean test
photos. A photo a side did not write (no face found) is uploaded as it is.
Then a summary line per Fawkes mode: the fastest jaxcloak preset whose PSR is
at least Fawkes' against every tracker, and the time ratios at that point; and
the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FACES, ROOT, emit, machine

import numpy as np  # noqa: E402

from jaxcloak import models  # noqa: E402
from jaxcloak.eval import dataset, experiments  # noqa: E402
from jaxcloak.eval.settings import Settings  # noqa: E402
from jaxcloak.faces import io as photo_io  # noqa: E402
from jaxcloak.faces.quality import region_ssimulacra2  # noqa: E402
from jaxcloak.faces.regions import region_dssim  # noqa: E402

POOL = FACES.parent / "pool"
FAWKES_VENV = ROOT / ".venv-ref"
# Fawkes pins TF 2.4 / Keras 2, which no longer install: TF 2.21 and its own
# NumPy, then Fawkes and its helpers without their pins (fawkes_peer.py patches
# the two places where the APIs moved).
FAWKES_DEPS = ("tensorflow-cpu==2.21.*", "h5py")
FAWKES_PINS = ("fawkes==1.0.4", "mtcnn==0.1.1", "pillow==13.0.0",
               "opencv-python-headless==5.0.0.93", "tf-keras==2.21.0")


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  raise SystemExit(2)


def fawkes_python() -> Path:
  """.venv-ref's python with fawkes 1.0.4 importable, building the venv when it is missing."""
  python = FAWKES_VENV / "bin" / "python"
  check = [str(python), "-c", "import fawkes.protection, tensorflow"]
  if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
    return python
  pip = [str(python), "-m", "pip", "install", "--quiet"]
  steps = [[sys.executable, "-m", "venv", str(FAWKES_VENV)], [*pip, "--upgrade", "pip"],
           [*pip, *FAWKES_DEPS], [*pip, "--no-deps", *FAWKES_PINS]]
  log(f"building the Fawkes venv {FAWKES_VENV} (TensorFlow 2.21 and fawkes 1.0.4, about 2 GB)")
  for cmd in steps:
    if subprocess.run(cmd).returncode:
      fail(f"building {FAWKES_VENV} failed at `{' '.join(cmd)}`; build it by hand: "
           f"python3 -m venv .venv-ref && .venv-ref/bin/pip install "
           f"{' '.join(repr(d) for d in FAWKES_DEPS)} && .venv-ref/bin/pip install --no-deps "
           f"{' '.join(FAWKES_PINS)}")
  if subprocess.run(check, capture_output=True).returncode:
    fail(f"{FAWKES_VENV} was built but `import fawkes.protection` fails in it; remove it and rerun")
  return python


def child_cpu() -> float:
  ru = resource.getrusage(resource.RUSAGE_CHILDREN)
  return ru.ru_utime + ru.ru_stime


def run_logged(cmd, log_path: Path, env=None, timeout=None) -> tuple[str, float, float]:
  """Runs cmd (stderr to log_path); its stdout, wall seconds and CPU seconds."""
  t, c = time.perf_counter(), child_cpu()
  with open(log_path, "w") as err:
    proc = subprocess.run([str(x) for x in cmd], stdout=subprocess.PIPE, stderr=err, text=True,
                          env=env, timeout=timeout)
  wall, cpu = time.perf_counter() - t, child_cpu() - c
  if proc.returncode:
    raise RuntimeError(f"{Path(str(cmd[1])).name} exited {proc.returncode}: "
                       f"{log_path.read_text()[-1500:]}")
  return proc.stdout, wall, cpu


def jaxcloak_side(preset: str, inputs: Path, pool: Path, work: Path, n: int) -> tuple[dict, dict]:
  """Two `jaxcloak cloak` runs (fresh, then warm caches); figures and source rel -> output."""
  home = work / f"home-{preset}"
  env = {k: v for k, v in os.environ.items() if k not in ("JAXCLOAK_COMPILE_CACHE", "XDG_CACHE_HOME")}
  env["HOME"] = str(home)
  exe = Path(sys.executable).with_name("jaxcloak")
  runs = []
  for k in (1, 2):
    out = work / f"jaxcloak-{preset}-{k}"
    _, wall, cpu = run_logged([exe, "cloak", inputs, "--pool", pool, "--preset", preset,
                               "-o", out, "--quiet"], work / f"jaxcloak-{preset}-{k}.log", env=env)
    runs.append((wall, cpu, out))
  (first, first_cpu, out), (wall, cpu, _) = runs
  report = [json.loads(l) for l in (out / "report.jsonl").read_text().splitlines() if l.strip()]
  written = {r["input"]: out / r["input"] for r in report if r.get("status") == "cloaked"}
  return dict(first_run_s=first, first_run_cpu_s=first_cpu, first_run_s_per_photo=first / n,
              s_per_photo=wall / n, cpu_s_per_photo=cpu / n, second_run_s=wall,
              photos=n, written=len(written),
              statuses={s: sum(r.get("status") == s for r in report)
                        for s in sorted({r.get("status") for r in report})}), written


def fawkes_side(python: Path, mode: str, inputs: list[tuple[str, Path]], work: Path,
                batch: int) -> tuple[dict, dict]:
  """fawkes_peer.py on the photos; its figures and source rel -> written PNG."""
  out = work / f"fawkes-{mode}"
  cmd = [python, ROOT / "benchmarks" / "fawkes_peer.py", "--mode", mode, "--out", out,
         "--batch-size", batch, *[p for _, p in inputs]]
  stdout, wall, cpu = run_logged(cmd, work / f"fawkes-{mode}.log")
  lines = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
  summary = next(l for l in lines if l.get("summary"))
  photos = [l for l in lines if not l.get("summary")]
  written = {rel: Path(l["output"]) for (rel, _), l in zip(inputs, photos) if l.get("output")}
  n = len(inputs)
  rec = {k: v for k, v in summary.items() if k not in ("peer", "summary")}
  # The job as its user waits for it: process start, TF import and model build included.
  rec.update(first_run_s=wall, first_run_cpu_s=cpu, first_run_s_per_photo=wall / n,
             s_per_photo=summary["steady_seconds_per_photo"],
             cpu_s_per_photo=summary["steady_cpu_seconds_per_photo"])
  return rec, written


def main_box(sample) -> tuple[int, int, int, int]:
  """The main face's detection box (x0, y0, x1, y1), clipped to the photo."""
  i = int(np.argmax(sample.boxes[:, 2] * sample.boxes[:, 3]))
  x, y, w, h = sample.boxes[i]
  H, W = sample.rgb.shape[:2]
  return (max(0, int(x)), max(0, int(y)), min(W, int(np.ceil(x + w))), min(H, int(np.ceil(y + h))))


class Judge:
  """Measures one side's written files: what people see, and PSR against the eval's trackers."""

  def __init__(self, ev: experiments.Evaluation, sources: dict[str, object], trackers):
    self.ev, self.sources, self.trackers = ev, sources, trackers

  def __call__(self, side: str, written: dict[str, Path]) -> dict:
    ev = self.ev
    dssims, ssims, cloaked = [], [], {}
    rels = list(self.sources)
    images = []
    for rel in rels:
      src = self.sources[rel]
      if rel not in written:
        images.append(None)
        continue
      rgb = photo_io.decode(written[rel].read_bytes(), name=str(written[rel])).rgb
      if rgb.shape != src.rgb.shape:
        raise ValueError(f"{side}: {written[rel]} is {rgb.shape}, its original {src.rgb.shape}")
      box = main_box(src)
      dssims.append(region_dssim(src.rgb, rgb, box))
      ssims.append(region_ssimulacra2(src.rgb, rgb, box))
      images.append(rgb)
    idx = [i for i, im in enumerate(images) if im is not None]
    found = dataset.detect_samples(ev.detector, [f"{side}/{rels[i]}" for i in idx],
                                   [self.sources[rels[i]].identity for i in idx],
                                   [images[i] for i in idx])
    redetected = dict(zip((rels[i] for i in idx), found))
    for rel in rels:  # what the user uploads: the cloak, or the photo as it is
      s = redetected.get(rel, self.sources[rel]) if rel in written else self.sources[rel]
      if s is not None:
        cloaked.setdefault(self.sources[rel].identity, []).append(s)
    ssims = [v for v in ssims if v is not None]
    rec = dict(written=len(written), photos=len(rels),
               redetected=sum(v is not None for v in found),
               dssim_mean=float(np.mean(dssims)) if dssims else None,
               dssim_max=float(np.max(dssims)) if dssims else None,
               ssimulacra2_mean=float(np.mean(ssims)) if ssims else None,
               ssimulacra2_worst=float(np.min(ssims)) if ssims else None, psr={})
    for tracker in self.trackers:
      for kind in ev.s.kinds:
        ks, ns, vals = 0, 0, []
        for user in ev.users:
          r = ev.track(tracker, kind, user, cloaked.get(user, []))["psr"]
          ks, ns = ks + r.k, ns + r.n
          vals.append(r.value)
        rec["psr"][f"{tracker}/{kind}"] = dict(psr=float(np.mean(vals)), k=ks, n=ns)
    return rec


def summary_rows(jax_sides: dict[str, dict], fawkes_sides: dict[str, dict]) -> list[dict]:
  """Per Fawkes mode: the fastest jaxcloak preset at least as protective on every tracker."""
  rows = []
  for mode, theirs in fawkes_sides.items():
    equal = [p for p, ours in jax_sides.items()
             if all(ours["psr"][t]["psr"] >= v["psr"] for t, v in theirs["psr"].items())]
    # Where each preset falls short of Fawkes, in test photos (PSR is a share of ~40).
    short = {p: {t: round((v["psr"] - ours["psr"][t]["psr"]) * v["n"], 1)
                 for t, v in theirs["psr"].items() if ours["psr"][t]["psr"] < v["psr"]}
             for p, ours in jax_sides.items()}
    row = dict(bench="peer", summary=True, fawkes_mode=mode, fawkes_batch=theirs["batch_size"],
               presets_at_least_as_protective=equal, short_by_test_photos=short,
               ratios={p: dict(first_run=theirs["first_run_s"] / ours["first_run_s"],
                               steady=theirs["s_per_photo"] / ours["s_per_photo"])
                       for p, ours in jax_sides.items()})
    if equal:
      best = min(equal, key=lambda p: jax_sides[p]["s_per_photo"])
      ours = jax_sides[best]
      row.update(preset=best,
                 ratio_steady=theirs["s_per_photo"] / ours["s_per_photo"],
                 ratio_steady_cpu=theirs["cpu_s_per_photo"] / ours["cpu_s_per_photo"],
                 # The whole first job, start-up counted on both sides.
                 ratio_first_run=theirs["first_run_s"] / ours["first_run_s"])
    else:
      row.update(preset=None, why="no jaxcloak preset reached Fawkes' PSR on every tracker")
    rows.append(row)
  return rows


def markdown_table(lines: list[dict]) -> str:
  """BUILD.md's table from a run's JSON lines: one row per side, then the summary rows."""
  trackers = None
  rows = []
  for l in lines:
    if l.get("bench") != "peer" or "psr" not in l:
      continue
    trackers = trackers or [t.split("/")[0] for t in l["psr"] if t.endswith("/probe")]
    side = {"none": "no cloak", "jaxcloak": f"jaxcloak `{l.get('preset')}`",
            "fawkes": f"Fawkes `{l.get('mode')}` (batch {l.get('batch_size')})"}[l["side"]]
    cells = [side]
    if l["side"] == "none":
      cells += [""] * 5
    else:
      cells += [f"{l['first_run_s']:.0f} ({l['first_run_s_per_photo']:.1f})",
                f"{l['s_per_photo']:.2f}", f"{l['cpu_s_per_photo']:.2f}",
                f"{l['dssim_mean']:.4f} / {l['dssim_max']:.4f}",
                f"{l['ssimulacra2_mean']:.1f} / {l['ssimulacra2_worst']:.1f}"]
    cells += [f"{l['psr'][f'{t}/probe']['psr']:.2f} / {l['psr'][f'{t}/knn']['psr']:.2f}"
              for t in trackers]
    rows.append("| " + " | ".join(cells) + " |")
  head = ["side", "first job s (s/photo)", "steady s/photo", "CPU s/photo",
          "DSSIM mean / max (face box)", "SSIMULACRA2 mean / worst", *(trackers or [])]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows, ""]
  summaries = [l for l in lines if l.get("summary")]
  if not summaries:  # a run stopped before its summary: derive it from the side lines
    sides = [l for l in lines if "psr" in l and "s_per_photo" in l]
    summaries = summary_rows({l["preset"]: l for l in sides if l["side"] == "jaxcloak"},
                             {l["mode"]: l for l in sides if l["side"] == "fawkes"})
  for l in summaries:
    if l.get("preset"):
      out.append(f"- Fawkes `{l['fawkes_mode']}`: fastest jaxcloak preset at least as protective "
                 f"on every tracker: `{l['preset']}`; {l['ratio_first_run']:.1f}x faster first "
                 f"job, {l['ratio_steady']:.1f}x steady, {l['ratio_steady_cpu']:.1f}x CPU")
    else:
      out.append(f"- Fawkes `{l['fawkes_mode']}`: {l['why']}")
    for p, miss in l.get("short_by_test_photos", {}).items():
      r = l["ratios"][p]
      gaps = ", ".join(f"{t} by {n:g}" for t, n in miss.items()) or "nowhere"
      out.append(f"  - `{p}` ({r['first_run']:.1f}x first job, {r['steady']:.1f}x steady): "
                 f"short of it (test photos) on {gaps}")
  for l in lines:
    if l.get("kind") == "end":
      out.append(f"- load average (1/5/15 min) at the start {l['loadavg_start']}, "
                 f"at the end {l['loadavg_end']}")
  return "\n".join(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--users", type=int, default=4)
  parser.add_argument("--photos-per-user", type=int, default=10, help="cloaked photos per user")
  parser.add_argument("--max-photos", type=int, default=20, help="photos per identity loaded")
  parser.add_argument("--presets", default="low,mid", help="jaxcloak presets, comma-separated")
  parser.add_argument("--fawkes-modes", default="low,mid", help="Fawkes modes; 'none' skips it")
  parser.add_argument("--fawkes-batch", type=int, default=8,
                      help="Fawkes' batch (its best on this CPU: 8; its CLI default: 1)")
  parser.add_argument("--trackers", default=",".join(models.EXTRACTORS),
                      help="tracker extractors (`<model>[@<pipeline>]`)")
  parser.add_argument("--pool-identities", type=int, default=100)
  parser.add_argument("--pool-photos", type=int, default=3)
  parser.add_argument("--keep", type=Path, help="keep the photos and outputs in this folder")
  parser.add_argument("--table", type=Path, metavar="JSONL",
                      help="only print the markdown table of an earlier run's output")
  args = parser.parse_args()
  if args.table:
    if not args.table.is_file():
      fail(f"{args.table}: no such file")
    print(markdown_table([json.loads(l) for l in args.table.read_text().splitlines()
                          if l.startswith("{")]))
    return
  presets = [p for p in args.presets.split(",") if p]
  modes = [m for m in args.fawkes_modes.split(",") if m and m != "none"]
  if not FACES.is_dir() or not POOL.is_dir():
    fail(f"needs the photos in {FACES} and the pool in {POOL}")
  python = fawkes_python() if modes else None
  load_start = os.getloadavg()
  emit(bench="peer", kind="start", loadavg=load_start, **machine())

  settings = Settings(
      data=FACES, pool=POOL, users=args.users, train_per_user=args.photos_per_user,
      max_photos=args.max_photos, pool_identities=args.pool_identities,
      pool_photos=args.pool_photos, trackers=tuple(args.trackers.split(",")),
      user_models=("dlib",), experiments=())
  ev = experiments.Evaluation(settings, log=log)
  ev.load()
  work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="jaxcloak-peer-"))
  work.mkdir(parents=True, exist_ok=True)
  inputs, pool = work / "photos", work / "pool"
  sources, fawkes_inputs = {}, []
  for user in ev.users:
    for s in ev.splits[user].train:
      rel = f"{user}/{Path(s.path).name}"
      (inputs / user).mkdir(parents=True, exist_ok=True)
      shutil.copyfile(s.path, inputs / rel)
      sources[rel] = s
      fawkes_inputs.append((rel, inputs / rel))
  for name, samples in ev.pool_samples.items():
    (pool / name).mkdir(parents=True, exist_ok=True)
    for s in samples:
      dst = pool / name / Path(s.path).name
      if not dst.exists():
        dst.symlink_to(Path(s.path).resolve())
  n = len(sources)
  emit(bench="peer", kind="photos", users=ev.users, photos=n,
       test_photos={u: len(ev.splits[u].test) for u in ev.users},
       tracker_classes=len(ev.classes), pool_identities=len(ev.pool_samples))
  judge = Judge(ev, sources, settings.trackers)
  clean = judge("clean", {})
  emit(bench="peer", side="none", **clean)

  jax_sides, fawkes_sides = {}, {}
  for p in presets:
    log(f"jaxcloak --preset {p} on {n} photos")
    rec, written = jaxcloak_side(p, inputs, pool, work, n)
    rec.update(judge(f"jaxcloak-{p}", written))
    jax_sides[p] = rec
    emit(bench="peer", side="jaxcloak", preset=p, loadavg=os.getloadavg(), **rec)
  for m in modes:
    log(f"Fawkes --mode {m} on {n} photos, batch {args.fawkes_batch}")
    try:
      rec, written = fawkes_side(python, m, fawkes_inputs, work, args.fawkes_batch)
    except RuntimeError as e:
      emit(bench="peer", side="fawkes", mode=m, status="failed", why=str(e))
      continue
    rec.update(judge(f"fawkes-{m}", written))
    fawkes_sides[m] = rec
    emit(bench="peer", side="fawkes", loadavg=os.getloadavg(), **rec)
  for row in summary_rows(jax_sides, fawkes_sides):
    emit(**row)
  emit(bench="peer", kind="end", loadavg_start=load_start, loadavg_end=os.getloadavg(),
       work=str(work) if args.keep else None)
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
