"""Protection evaluation: trackers, protection success rate, robustness, cloak detection.

`Evaluation(Settings(...)).run()` returns records; `report.write` turns them
into report.md, results.jsonl and plots. The `jaxcloak eval` subcommand is
`cli.add_parser` / `cli.run`. Names are imported lazily so that building the
CLI parser does not load JAX.
"""

_LAZY = {"EXPERIMENTS": "settings", "Evaluation": "experiments", "Settings": "settings",
         "Rate": "metrics", "accuracy": "metrics", "psr": "metrics"}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(f"jaxcloak.eval.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jaxcloak.eval' has no attribute {name!r}")


__all__ = list(_LAZY)
