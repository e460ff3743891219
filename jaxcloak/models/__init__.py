"""Ported models. `load(name)` returns a ready `Extractor`; `EXTRACTORS` lists them.

Each module has the same face: `SOURCE` (pinned weight file), `convert(path)`
(source file -> flat NumPy arrays), the Flax `Model`, and `load(weights_dir)`.
Fine-tuned variants (`jaxcloak weights robust`) are not listed: they exist once
trained, as a manifest entry naming their `base`, and `load` finds them there.
"""

import dataclasses
import importlib

import jax
import jax.numpy as jnp

from jaxcloak import weights
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


def variant_entry(name: str, weights_dir=None) -> dict | None:
  """The manifest entry of a fine-tuned variant (one with a `base` ported model), if any."""
  entry = weights.read_manifest(weights_dir or weights.default_weights_dir()).get(name)
  return entry if entry and entry.get("base") in EXTRACTORS else None


def load(name: str, weights_dir=None) -> Extractor:
  """Loads a face-recognition extractor by registry name, or a fine-tuned variant
  (e.g. `sface_robust`): the base's architecture, template and preprocessing with
  the variant's params and its own same-person threshold."""
  if name in EXTRACTORS:
    return module(name).load(weights_dir)
  entry = variant_entry(name, weights_dir)
  if entry is None:
    stem = name.removesuffix("_robust")
    hint = (f"; make it with `jaxcloak weights robust {stem} --data DIR`"
            if stem != name and stem in EXTRACTORS else "")
    raise KeyError(f"unknown extractor '{name}'; known: {', '.join(EXTRACTORS)}{hint}")
  ext = module(entry["base"]).load(weights_dir)
  arrays = weights.load_arrays(name, weights_dir)  # checks the manifest's sha256
  params = weights.merge_params(ext.params, weights.unflatten(arrays), name)
  threshold = entry.get("same_person_cosine")
  return dataclasses.replace(
      ext, name=name, params=jax.tree.map(jnp.asarray, params),
      same_person_cosine=ext.same_person_cosine if threshold is None else float(threshold))


__all__ = ["Extractor", "EXTRACTORS", "MODULES", "load", "module", "variant_entry"]
