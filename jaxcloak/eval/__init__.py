"""Protection evaluation: trackers, protection success rate, robustness, cloak detection.

`Evaluation(Settings(...)).run()` returns records; `report.write` turns them
into report.md, results.jsonl and plots. The `jaxcloak eval` subcommand is
`cli.add_parser` / `cli.run`.
"""

from jaxcloak.eval.experiments import EXPERIMENTS, Evaluation, Settings
from jaxcloak.eval.metrics import Rate, accuracy, psr

__all__ = ["EXPERIMENTS", "Evaluation", "Rate", "Settings", "accuracy", "psr"]
