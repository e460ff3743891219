"""CloakConfig's and EngineSettings' fields as command-line flags, generated, for every
subcommand.

`cloak` and `migrate` get one flag per field (`--local-budget`, `--view-kinds`,
`--no-jpeg-aware`, `--max-pixels`), typed from the field's annotation and helped
by its comment in config.py, so a new field reaches every command by itself;
`eval` takes the cloak's fields as `--cloak FIELD=VALUE` (config.parse_field).
Flags default to None, so only what a person typed overrides the preset (or the
settings' defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing

from jaxcloak import config as config_lib
from jaxcloak.config import CloakConfig, EngineSettings

NONE_WORDS = ("none", "off")  # how a person clears an optional field, e.g. --local-budget off
_CLEARED = object()  # a flag given as 'off' (None itself means "not given")


def _comments(record: type) -> dict[str, str]:
  """Field name -> its comment in config.py: the one on its line, else the block above it."""
  source = inspect.getsource(record)
  lines = source.splitlines()
  trailing: dict[int, str] = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      trailing[tok.start[0]] = tok.string.lstrip("#").strip()
  out = {}
  for i, line in enumerate(lines, 1):
    name = line.strip().split(":")[0]
    if not name.isidentifier() or line.lstrip().startswith("#"):
      continue
    if i in trailing and not line.lstrip().startswith("#"):
      out[name] = trailing[i]
      continue
    block, j = [], i - 1
    while j >= 1 and lines[j - 1].lstrip().startswith("#"):
      block.insert(0, trailing[j])
      j -= 1
    if block:
      out[name] = " ".join(block)
  return out


def _optional(hint) -> tuple[object, bool]:
  """(inner type, whether None is allowed) of `X | None`."""
  args = typing.get_args(hint)
  if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args:
    return next(a for a in args if a is not type(None)), True
  return hint, False


def _scalar(kind, allow_none: bool):
  def parse(text: str):
    if allow_none and text.strip().lower() in NONE_WORDS:
      return _CLEARED
    return kind(text)
  parse.__name__ = kind.__name__  # argparse names the type in its error
  return parse


def _list(kind):
  def parse(text: str) -> tuple:
    return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
  parse.__name__ = f"comma list of {kind.__name__}"
  return parse


@functools.cache
def _specs(record: type = CloakConfig) -> tuple[tuple[str, str, dict], ...]:
  """(field, flag, argparse keywords) per field of `record` (CloakConfig, EngineSettings)."""
  hints = typing.get_type_hints(record, vars(config_lib))
  comments = _comments(record)
  preset_fields = {k for values in config_lib.PRESETS.values() for k in values} \
      if record is CloakConfig else set()
  specs = []
  for f in dataclasses.fields(record):
    hint, allow_none = _optional(hints[f.name])
    allow_none &= record is CloakConfig  # a preset may set it; a settings' None is its default
    help_ = comments.get(f.name, "")
    default = f.default
    flag = "--" + f.name.replace("_", "-")
    kw: dict = {"dest": f.name, "default": None}
    if hint is bool:
      if default:
        flag = "--no-" + f.name.replace("_", "-")
        kw.update(action="store_const", const=False)
        help_ = "turn off: " + help_
      else:
        kw.update(action="store_const", const=True)
    elif typing.get_origin(hint) is typing.Literal:
      kw.update(choices=list(typing.get_args(hint)))
    elif typing.get_origin(hint) is tuple:
      kind = typing.get_args(hint)[0]
      kw.update(type=_list(kind), metavar="A,B")
      if f.name == "view_kinds":
        help_ += f" (of {','.join(config_lib.VIEW_KINDS)})"
    else:
      kw.update(type=_scalar(hint, allow_none))
      if allow_none:
        help_ += f" ('{NONE_WORDS[1]}' clears it)"
    if f.name in preset_fields:
      help_ += " [default: the preset's]"
    elif hint is not bool:
      shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
      help_ += f" [default: {shown if shown not in ('', None) else 'none'}]"
    kw["help"] = help_.replace("%", "%%")
    specs.append((f.name, flag, kw))
  return tuple(specs)


def add_cloak_flags(parser: argparse.ArgumentParser) -> None:
  """Adds `--preset` and one flag per CloakConfig field, in an argument group."""
  g = parser.add_argument_group("cloak settings (a preset, then any field of it)")
  g.add_argument("--preset", default="mid", choices=sorted(config_lib.PRESETS),
                 help="budget, steps and transfer settings by name (BUILD.md) [default: mid]. "
                      "What to expect: " + "; ".join(
                          f"{k}: {v}" for k, v in config_lib.PRESET_EXPECTATIONS.items()))
  for _, flag, kw in _specs():
    g.add_argument(flag, **kw)


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
  """One flag per EngineSettings field, in an argument group."""
  g = parser.add_argument_group("engine settings")
  for _, flag, kw in _specs(EngineSettings):
    g.add_argument(flag, **kw)


def given_fields(args: argparse.Namespace, record: type = CloakConfig) -> dict:
  """The fields of `record` whose flag a person gave ('off' as None)."""
  given = {name: getattr(args, name) for name, _, _ in _specs(record)
           if getattr(args, name, None) is not None}
  return {k: None if v is _CLEARED else v for k, v in given.items()}


def config_from_flags(args: argparse.Namespace, **overrides) -> CloakConfig:
  """The preset with every flag a person gave (then `overrides`) applied."""
  return config_lib.preset(args.preset, **{**given_fields(args), **overrides})


def settings_from_flags(args: argparse.Namespace) -> EngineSettings:
  """The engine settings with every flag a person gave; the rest are the defaults."""
  return EngineSettings(**{k: v for k, v in given_fields(args, EngineSettings).items()
                           if v is not None})


def flag_names() -> list[str]:
  """Every generated flag, for tests and docs."""
  return ["--preset"] + [flag for _, flag, _ in _specs()]
