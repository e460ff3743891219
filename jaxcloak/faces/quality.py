"""What people see: a perceptual score of each written face region.

SSIMULACRA2 (Cloudinary's metric made for judging visible compression
artefacts; PyPI `ssimulacra2`) of the region in the original against the same
region of the written file. 100 is identical; about 90 and above is visually
lossless at a normal viewing distance, 70 high quality, 50 medium.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from ssimulacra2 import compute_ssimulacra2

MIN_SIDE = 16  # the metric's multi-scale pyramid needs a few levels


def _png(rgb: np.ndarray) -> io.BytesIO:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG", compress_level=0)
  buf.seek(0)
  return buf


def region_ssimulacra2(original: np.ndarray, written: np.ndarray, box) -> float | None:
  """SSIMULACRA2 of two uint8 [h, w, 3] photos over box (x0, y0, x1, y1); None if too small."""
  x0, y0, x1, y1 = box
  if min(x1 - x0, y1 - y0) < MIN_SIDE:
    return None
  a = np.ascontiguousarray(original[y0:y1, x0:x1, :3])
  b = np.ascontiguousarray(written[y0:y1, x0:x1, :3])
  return float(compute_ssimulacra2(_png(a), _png(b)))
