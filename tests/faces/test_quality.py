"""SSIMULACRA2 of written face regions, on a real photo."""

import numpy as np
from PIL import Image

from jaxcloak.faces import quality


def test_ssimulacra2_orders_visible_change(faces_dir):
  rgb = np.asarray(Image.open(sorted(faces_dir.glob("*/1.jpg"))[0]).convert("RGB"))
  box = (50, 40, 200, 210)
  rng = np.random.default_rng(0)
  scores = [quality.region_ssimulacra2(rgb, np.clip(rgb + rng.normal(0, s, rgb.shape), 0, 255)
                                       .astype(np.uint8), box) for s in (1, 4)]
  assert quality.region_ssimulacra2(rgb, rgb, box) == 100.0
  assert 100 > scores[0] > scores[1] > 30
  # Outside the box changes nothing.
  other = rgb.copy()
  other[:30] = 0
  assert quality.region_ssimulacra2(rgb, other, box) == 100.0
  assert quality.region_ssimulacra2(rgb, rgb, (0, 0, 10, 10)) is None
