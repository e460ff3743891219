"""Tracker features of evaluation samples: each tracker (extractor @ pipeline)
embeds a sample once, and every experiment reads the cache."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxcloak.eval import pipelines, trackers
from jaxcloak.eval.dataset import Sample
from jaxcloak.eval.settings import Settings

class FeatureStore:
  """Embeds samples per tracker (extractor @ pipeline), caching by sample key."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.embedders: dict[str, object] = {}
    self.pipelines = pipelines.Pipelines(weights_dir=settings.weights_dir)
    self.cache: dict[tuple[str, str], np.ndarray] = {}

  def embedder(self, spec: str):
    """The extractor of a tracker spec (its pipeline part is ignored)."""
    model, _ = pipelines.parse(spec)
    if model not in self.embedders:
      self.embedders[model] = trackers.make_embedder(
          model, weights_dir=self.settings.weights_dir,
          insightface_root=self.settings.insightface_root)
    return self.embedders[model]

  def crops(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    """The ported extractor's input crops as the spec's pipeline makes them."""
    emb = self.embedder(spec)
    if not isinstance(emb, trackers.PortedEmbedder):
      raise ValueError(f"{spec}: crops need a ported (JAX) extractor")
    e = emb.extractor
    return self.pipelines[pipelines.parse(spec)[1]].crops(samples, e.input_size, e.template)

  def _embed(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    emb = self.embedder(spec)
    pipe = pipelines.parse(spec)[1]
    if pipe == pipelines.DEFAULT:
      return emb([s.rgb for s in samples], [s.landmarks for s in samples])
    if isinstance(emb, trackers.PortedEmbedder):
      return np.concatenate([emb.embed_crops(self.crops(spec, samples[i:i + 64]))
                             for i in range(0, len(samples), 64)])  # bounds crop memory
    p = self.pipelines[pipe]
    if not p.aligns:
      raise ValueError(f"{spec}: the {pipe} pipeline needs a ported extractor")
    return emb([s.rgb for s in samples], p.landmarks(samples))

  def __call__(self, spec: str, samples: Sequence[Sample]) -> np.ndarray:
    spec = pipelines.spec(*pipelines.parse(spec))  # 'dlib@yunet' shares 'dlib''s cache
    missing = {s.key: s for s in samples if (spec, s.key) not in self.cache}
    if missing:
      todo = list(missing.values())
      feats = self._embed(spec, todo)
      for s, f in zip(todo, feats):
        self.cache[(spec, s.key)] = f
    if not samples:
      return np.zeros((0, 1), np.float32)
    return np.stack([self.cache[(spec, s.key)] for s in samples])
