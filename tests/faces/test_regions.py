"""Pasting cloaked faces back: overlapping regions and the per-pixel cap."""

import numpy as np

from jaxcloak.faces import regions


def _region(box, bucket=64):
  x0, y0, x1, y1 = box
  return regions.Region(box, 1.0, bucket, np.zeros((bucket, bucket, 3), np.float32),
                        np.ones((bucket, bucket), np.float32), [])


def test_overlapping_pastes_add_up_and_hold_cap_brings_them_back():
  photo = np.full((80, 120, 3), 100, np.uint8)
  base = np.full((64, 64, 3), 100 / 255, np.float32)
  cap = 6 / 255
  a, b = _region((0, 0, 64, 64)), _region((40, 0, 104, 64))  # overlap: x 40..63
  a.patch[:], b.patch[:] = base, base
  rgb = regions.paste(photo, a, base + cap)
  rgb = regions.paste(rgb, b, base + cap)
  change = rgb.astype(int) - photo
  assert change[:, 50].max() == 12 and change[:, 20].max() == 6  # the sum, then one face
  held = regions.hold_cap(photo, rgb, cap)
  assert np.abs(held.astype(int) - photo).max() == 6
  np.testing.assert_array_equal(held[:, :40], rgb[:, :40])  # within the cap: untouched
  lower = regions.paste(photo, a, base - 2 * cap)
  assert (regions.hold_cap(photo, lower, cap).astype(int) - photo).min() == -6
