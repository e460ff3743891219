"""jaxcloak: Fawkes-style face cloaking in JAX.

The public API (jaxcloak/api.py): `cloak`, `check`, `migrate`, `CloakConfig`,
`PRESETS` and `preset`. Deeper modules stay importable. Images are float32 NHWC
RGB in [0, 1] everywhere inside JAX code.
"""

from pathlib import Path

from jaxcloak.config import PRESETS, CloakConfig, preset

__version__ = "0.1.0"
SAMPLES_DIR = Path(__file__).parent / "samples"
__all__ = ["cloak", "check", "migrate", "CloakConfig", "PRESETS", "preset", "SAMPLES_DIR"]


def __getattr__(name):
  # The three calls import JAX and the models: only when used, so `import jaxcloak`
  # (and the CLI's parser) stays light.
  if name in ("cloak", "check", "migrate"):
    from jaxcloak import api
    return getattr(api, name)
  raise AttributeError(f"module 'jaxcloak' has no attribute {name!r}")
