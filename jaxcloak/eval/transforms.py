"""Image transforms a tracker may apply to its photos (Fawkes §7 robustness).

Each transform maps a uint8 RGB photo and its main-face landmarks to a new
photo and landmarks, deterministically for a given seed. Pixel transforms keep
the landmarks; the geometric augmentation moves them with the image.
"""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Transform:
  kind: str  # blur | noise | jpeg | augment
  value: float = 0.0  # blur sigma (px), noise sigma (of [0, 1]), JPEG quality
  # augment: max rotation (deg), shift (fraction of size), zoom (fraction)
  rotation: float = 20.0
  shift: float = 0.15
  zoom: float = 0.15

  @property
  def label(self) -> str:
    if self.kind == "augment":
      return f"augment(rot{self.rotation:g},shift{self.shift:g},zoom{self.zoom:g})"
    return f"{self.kind}({self.value:g})"

  @property
  def train_only(self) -> bool:
    # Augmentation is a training-time technique: test photos stay as they are.
    return self.kind == "augment"


def parse(spec: str) -> Transform:
  """'blur:1.5' | 'noise:0.05' | 'jpeg:50' | 'augment' -> Transform."""
  kind, _, value = spec.partition(":")
  if kind == "augment":
    return Transform("augment")
  if kind not in ("blur", "noise", "jpeg"):
    raise ValueError(f"unknown transform {spec!r} (blur:SIGMA, noise:SIGMA, jpeg:QUALITY, augment)")
  return Transform(kind, float(value))


def apply(t: Transform, rgb: np.ndarray, landmarks: np.ndarray, *,
          seed) -> tuple[np.ndarray, np.ndarray]:
  """Returns (transformed uint8 photo, landmarks in its pixels)."""
  rng = np.random.default_rng(seed)
  if t.kind == "blur":
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=t.value, borderType=cv2.BORDER_REFLECT), landmarks
  if t.kind == "noise":
    noisy = rgb.astype(np.float32) / 255.0 + rng.normal(0.0, t.value, rgb.shape)
    return np.clip(np.round(noisy * 255.0), 0, 255).astype(np.uint8), landmarks
  if t.kind == "jpeg":
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(t.value))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), landmarks
  if t.kind == "augment":
    h, w = rgb.shape[:2]
    angle = rng.uniform(-t.rotation, t.rotation)
    scale = 1.0 + rng.uniform(-t.zoom, t.zoom)
    tx, ty = rng.uniform(-t.shift, t.shift) * w, rng.uniform(-t.shift, t.shift) * h
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lm = np.asarray(landmarks, np.float64) @ m[:, :2].T + m[:, 2]
    return out, lm.astype(np.float32)
  raise ValueError(f"unknown transform kind {t.kind!r}")
