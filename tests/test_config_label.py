"""config_label (eval/cloaking.py) keys cloaked samples, cached tracker features and report
rows: two CloakConfigs that differ in any one field must never share a label.

The changed values come from each field's type hint and default, so a new field is
covered without editing this file; one whose type gives no valid other value (a
free-form string, a tuple of names outside VOCABULARY) fails until it gets one here.
"""

import dataclasses
import itertools
import types
import typing

import pytest

from jaxcloak import models
from jaxcloak.config import PRESETS, VIEW_KINDS, CloakConfig, preset
from jaxcloak.eval.cloaking import config_label

HINTS = typing.get_type_hints(CloakConfig)
FIELDS = [f.name for f in dataclasses.fields(CloakConfig)]
# The valid items of tuple-of-name fields.
VOCABULARY = {"extractors": tuple(models.EXTRACTORS), "view_kinds": VIEW_KINDS}
PER_FIELD = 3  # other values tried per field and base


def _candidates(name: str, hint, default) -> list:
  """Values of `hint` other than `default`, likely valid ones first (validity is checked later)."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is typing.Literal:
    return [a for a in args if a != default]
  if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None
    (inner,) = [a for a in args if a is not type(None)]
    if default is not None:
      return [None] + _candidates(name, inner, default)
    start = {int: 1, float: 0.5}.get(inner)
    return [] if start is None else [start] + _candidates(name, inner, start)
  if hint is bool:
    return [not default]
  if hint is int:
    return [default + 1, default + 2, 2 * default + 10, 90]
  if hint is float:
    return [0.1, 0.2, 0.5] if default == 0 else [default * f for f in (0.5, 0.25, 2, 1.5)]
  if origin is tuple and args[0] is float:
    return [v for v in [(1.0,), (0.5,), (1.0, 2.0), ()] if v != default]
  if origin is tuple and args[0] is str:
    vocab = VOCABULARY.get(name, default)
    values = [c for k in (1, 2) for c in itertools.combinations(vocab, k)]
    return [v for v in values + [default[:-1], default[::-1]] if v != default]
  return []


def _replace(config: CloakConfig, **changes) -> CloakConfig | None:
  """The changed config, or None where the change is not a valid config."""
  try:
    return dataclasses.replace(config, **changes)
  except ValueError:
    return None


def _variants(base: CloakConfig) -> list[CloakConfig]:
  """Per field, up to PER_FIELD valid configs that change it from `base`. A value valid
  only with another field changed too (scope='person' needs perturbation='shaped')
  comes with that change; the config with that change alone is among the variants."""
  singles = {}
  for k in FIELDS:
    changed = (_replace(base, **{k: v}) for v in _candidates(k, HINTS[k], getattr(base, k)))
    singles[k] = list(itertools.islice((c for c in changed if c is not None), PER_FIELD))
  out = [c for cs in singles.values() for c in cs]
  for k in FIELDS:
    if singles[k]:
      continue
    both = (_replace(c, **{k: v}) for v in _candidates(k, HINTS[k], getattr(base, k))
            for other in FIELDS if other != k for c in singles[other])
    found = next((c for c in both if c is not None), None)
    assert found, f"no valid other value for CloakConfig.{k} from {base}; give the test one"
    out.append(found)
  return out


def _differences(a: CloakConfig, b: CloakConfig) -> dict:
  return {k: (getattr(a, k), getattr(b, k)) for k in FIELDS if getattr(a, k) != getattr(b, k)}


@pytest.mark.parametrize("base_name", ["default"] + list(PRESETS))
def test_configs_that_differ_in_a_field_get_different_labels(base_name):
  base = CloakConfig() if base_name == "default" else preset(base_name)
  seen: dict[str, CloakConfig] = {}
  changed = set()
  for c in [base] + _variants(base):
    label = config_label(c)
    if label in seen and seen[label] != c:
      pytest.fail(f"{label!r} names two configs that differ in {_differences(seen[label], c)}")
    seen[label] = c
    changed |= set(_differences(base, c))
  assert changed == set(FIELDS)  # every field was changed at least once


# Labels are exact: a value %g would round (0.01200001) is written in full.
@pytest.mark.parametrize("field,value", [("budget", 0.012), ("stop_fraction", 0.2),
                                         ("blur_sigmas", (1.0,))])
def test_values_that_differ_past_six_digits_get_different_labels(field, value):
  near = tuple(x * (1 + 1e-7) for x in value) if isinstance(value, tuple) else value * (1 + 1e-7)
  a, b = CloakConfig(**{field: value}), CloakConfig(**{field: near})
  assert a != b and config_label(a) != config_label(b)
