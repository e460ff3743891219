"""Tracker face pipelines: how a tracker finds and crops the face it embeds.

A cloak is optimised through jaxcloak's own YuNet landmarks and alignment; a
real tracker detects and crops in its own way. A tracker spec names the
extractor and, after `@`, the pipeline:

  `dlib`, `dlib@yunet`  the eval's YuNet landmarks, similarity-aligned to the
                        model's template (what the cloak optimised through)
  `dlib@retinaface`     RetinaFace MobileNet-0.25 landmarks (another detector),
                        similarity-aligned to the same template
  `dlib@margin`         RetinaFace's box grown by `MARGIN` on every side, made
                        square and resized to the model's input: no landmark
                        alignment at all (FaceNet's original MTCNN recipe)

The RetinaFace pipelines run the detector on the pixels the tracker has (the
written cloaked file, a transformed copy) and take the face nearest the
photo's main face. Where RetinaFace finds none there, they fall back to the
YuNet landmarks (or a box around them) so every pipeline sees the same photos,
and count it (`Pipeline.fallback`). Crops are float32 NHWC in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from jaxcloak.eval.dataset import Sample
from jaxcloak.eval.trackers import aligned_crops

DEFAULT = "yunet"
PIPELINES = ("yunet", "retinaface", "margin")
# Share of the box side added on each side. Clean accuracy on 15 LFW identities
# (75 test photos, probe): 0.05 -> dlib 0.93, facenet 1.00, sface 0.99; 0.15 ->
# 0.89 / 1.00 / 1.00; 0.3 -> 0.69 / 0.99 / 0.97 (aligned crops: 1.00 for all).
MARGIN = 0.05
# A box around the 5 landmarks, for photos RetinaFace misses: side = this many
# times the larger of the eye distance and the eye-to-mouth height (measured on
# 30 LFW faces: RetinaFace's longer box side is 2.6-3.0 x that, 5-95%),
# centred between eyes and mouth.
_LANDMARK_BOX = 2.8


def parse(spec: str) -> tuple[str, str]:
  """'sface@retinaface' -> ('sface', 'retinaface'); no '@' -> the default pipeline."""
  model, sep, pipeline = spec.rpartition("@")
  if not sep:
    return spec, DEFAULT
  if pipeline in PIPELINES:
    if not model:
      raise ValueError(f"tracker {spec!r} names no extractor before '@'")
    return model, pipeline
  if spec.startswith("insightface:"):
    return spec, DEFAULT  # an '@' inside a model path
  raise ValueError(f"unknown tracker pipeline {pipeline!r} in {spec!r} "
                   f"(use one of {', '.join(PIPELINES)})")


def spec(model: str, pipeline: str) -> str:
  """The canonical tracker name: the default pipeline is left implicit."""
  return model if pipeline == DEFAULT else f"{model}@{pipeline}"


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
  """[5, 2] landmarks -> an (x, y, w, h) square face box around them."""
  lm = np.asarray(landmarks, np.float32)
  eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
  side = _LANDMARK_BOX * max(np.linalg.norm(lm[1] - lm[0]), np.linalg.norm(mouth - eyes), 1.0)
  c = (eyes + mouth) / 2
  return np.array([c[0] - side / 2, c[1] - side / 2, side, side], np.float32)


def margin_crops(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], size: int, *,
                 margin: float = MARGIN) -> np.ndarray:
  """[n, size, size, 3] crops of each (x, y, w, h) box grown by `margin`, square, resized.

  Bilinear, zeros outside the photo (as the aligned crops), no rotation.
  """
  out = np.zeros((len(images), size, size, 3), np.float32)
  for i, (im, b) in enumerate(zip(images, boxes)):
    x, y, w, h = map(float, b)
    side = max(w, h) * (1 + 2 * margin)
    x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
    k = size / side
    # Pixel centres on integers: the box's outer edge (x0 - 0.5) maps to -0.5.
    m = np.array([[k, 0, -k * x0 + 0.5 * k - 0.5], [0, k, -k * y0 + 0.5 * k - 0.5]], np.float64)
    out[i] = cv2.warpAffine(im.astype(np.float32) / 255.0, m, (size, size),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out


class RetinaFaceFaces:
  """RetinaFace detections of each sample's main face, cached by sample key."""

  def __init__(self, detector):
    self.detector = detector
    self._found: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # key -> (box, landmarks)

  def __call__(self, samples: Sequence[Sample]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    todo = [s for s in dict((s.key, s) for s in samples).values() if s.key not in self._found]
    for start in range(0, len(todo), 32):
      chunk = todo[start:start + 32]
      for s, d in zip(chunk, self.detector([s.rgb for s in chunk])):
        lm = np.asarray(s.landmarks, np.float32)
        # The photo's subject is the face the eval's YuNet chose; a tracker
        # labelling this photo would pick the same person.
        reach = 1.5 * max(float(np.linalg.norm(lm[1] - lm[0])), 8.0)
        i = d.nearest(lm.mean(0), reach)
        self._found[s.key] = None if i is None else (d.boxes[i], d.landmarks[i])
    return [self._found[s.key] for s in samples]


class Pipeline:
  """One tracker-side face pipeline; `crops` for ported models, `landmarks` if it aligns."""

  def __init__(self, name: str, faces: RetinaFaceFaces | None = None):
    if name not in PIPELINES:
      raise ValueError(f"unknown tracker pipeline {name!r} (use one of {', '.join(PIPELINES)})")
    if name != DEFAULT and faces is None:
      raise ValueError(f"the {name} pipeline needs the RetinaFace detector")
    self.name, self.faces = name, faces
    self.seen: set[str] = set()
    self.fallback: set[str] = set()  # sample keys where its own detector found no face

  @property
  def aligns(self) -> bool:
    return self.name != "margin"

  def _found(self, samples):
    found = self.faces(samples)
    for s, f in zip(samples, found):
      self.seen.add(s.key)
      if f is None:
        self.fallback.add(s.key)
    return found

  def landmarks(self, samples: Sequence[Sample]) -> list[np.ndarray]:
    """[5, 2] landmarks per sample the tracker aligns with."""
    if self.name == DEFAULT:
      return [s.landmarks for s in samples]
    if not self.aligns:
      raise ValueError(f"the {self.name} pipeline does not align to landmarks")
    return [s.landmarks if f is None else f[1] for s, f in zip(samples, self._found(samples))]

  def crops(self, samples: Sequence[Sample], size: int, template: np.ndarray) -> np.ndarray:
    """[n, size, size, 3] float32 crops in [0, 1] as this pipeline makes them."""
    if self.aligns:
      return aligned_crops([s.rgb for s in samples], self.landmarks(samples), size, template)
    boxes = [box_from_landmarks(s.landmarks) if f is None else f[0]
             for s, f in zip(samples, self._found(samples))]
    return margin_crops([s.rgb for s in samples], boxes, size)

  def stats(self) -> dict:
    return {"photos": len(self.seen), "fallback": len(self.fallback)}


class Pipelines:
  """The pipelines a run uses, built on first use; the RetinaFace ones share one detector."""

  def __init__(self, *, weights_dir=None):
    self.weights_dir = weights_dir
    self._faces: RetinaFaceFaces | None = None
    self._built: dict[str, Pipeline] = {}

  def __getitem__(self, name: str) -> Pipeline:
    if name not in self._built:
      if name != DEFAULT and name in PIPELINES and self._faces is None:
        from jaxcloak.eval.retinaface import RetinaFace
        self._faces = RetinaFaceFaces(RetinaFace(weights_dir=self.weights_dir))
      self._built[name] = Pipeline(name, self._faces)
    return self._built[name]

  def stats(self) -> dict[str, dict]:
    """pipeline -> photos it cropped and how many fell back to YuNet's face."""
    return {n: p.stats() for n, p in self._built.items() if n != DEFAULT}
