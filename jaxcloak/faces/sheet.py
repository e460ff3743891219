"""Side-by-side pictures of originals and cloaks, for people to judge what a cloak shows.

Each row is one photo: the original, the cloaked version, and their difference
amplified around mid-grey, each face box labelled (DSSIM, worst block,
SSIMULACRA2). Rows stack into one PNG, so a person compares many faces at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

AMPLIFY = 10.0  # difference x10 around grey: a 1/255 change shows as 10 levels
LABEL_HEIGHT = 14


def _panel(rgb: np.ndarray, boxes: Sequence, labels: Sequence[str], title: str) -> Image.Image:
  im = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + LABEL_HEIGHT), "white")
  im.paste(Image.fromarray(rgb), (0, LABEL_HEIGHT))
  draw = ImageDraw.Draw(im)
  draw.text((2, 1), title, fill="black")
  for box, label in zip(boxes, labels):
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0 + LABEL_HEIGHT, x1 - 1, y1 - 1 + LABEL_HEIGHT), outline=(255, 200, 0))
    if label:
      draw.text((x0 + 2, y0 + LABEL_HEIGHT + 2), label, fill=(255, 255, 0))
  return im


def row(original: np.ndarray, cloaked: np.ndarray, boxes: Sequence, labels: Sequence[str], *,
        title: str = "", zoom: int = 1) -> Image.Image:
  """One photo's row: original | cloaked | amplified difference, face boxes labelled.

  Args:
    original, cloaked: [h, w, 3] uint8, same size.
    boxes: face regions (x0, y0, x1, y1) in photo pixels.
    labels: one short text per box (drawn on the cloaked and difference panels).
    zoom: integer upscale (nearest) so small faces can be inspected.
  """
  diff = cloaked.astype(np.float32) - original.astype(np.float32)
  amplified = np.clip(128 + AMPLIFY * diff, 0, 255).astype(np.uint8)
  if zoom > 1:
    up = lambda a: np.repeat(np.repeat(a, zoom, 0), zoom, 1)
    original, cloaked, amplified = up(original), up(cloaked), up(amplified)
    boxes = [tuple(v * zoom for v in b) for b in boxes]
  panels = [_panel(original, boxes, [""] * len(boxes), f"original {title}"),
            _panel(cloaked, boxes, labels, "cloaked"),
            _panel(amplified, boxes, labels, f"difference x{AMPLIFY:g}")]
  out = Image.new("RGB", (sum(p.width for p in panels) + 8, panels[0].height), "white")
  x = 0
  for p in panels:
    out.paste(p, (x, 0))
    x += p.width + 4
  return out


def stack(rows: Sequence[Image.Image], header: str = "") -> Image.Image:
  """Rows under each other, with an optional one-line header."""
  top = LABEL_HEIGHT + 4 if header else 0
  out = Image.new("RGB", (max(r.width for r in rows), top + sum(r.height + 4 for r in rows)), "white")
  if header:
    ImageDraw.Draw(out).text((2, 2), header, fill="black")
  y = top
  for r in rows:
    out.paste(r, (0, y))
    y += r.height + 4
  return out
