"""Ported models. `load(name)` returns a ready `Extractor`; `EXTRACTORS` lists them.

Each module has the same face: `SOURCE` (pinned weight file), `convert(path)`
(source file -> flat NumPy arrays), the Flax `Model`, and `load(weights_dir)`.
"""

import importlib

from jaxcloak.models.base import Extractor

# Registry name -> module. Modules are imported lazily so one model's
# dependencies never slow down or break another's use.
MODULES = {
    "dlib": "jaxcloak.models.dlib_resnet",
    "facenet": "jaxcloak.models.facenet",
    "sface": "jaxcloak.models.sface",
    "faceres": "jaxcloak.models.faceres",
    "mobileface": "jaxcloak.models.mobileface",
    "yunet": "jaxcloak.models.yunet",
}
EXTRACTORS = ("dlib", "facenet", "sface", "faceres", "mobileface")


def module(name: str):
  if name not in MODULES:
    raise KeyError(f"unknown model '{name}'; known: {', '.join(MODULES)}")
  return importlib.import_module(MODULES[name])


def load(name: str, weights_dir=None) -> Extractor:
  """Loads a face-recognition extractor by registry name."""
  if name not in EXTRACTORS:
    raise KeyError(f"unknown extractor '{name}'; known: {', '.join(EXTRACTORS)}")
  return module(name).load(weights_dir)


__all__ = ["Extractor", "EXTRACTORS", "MODULES", "load", "module"]
