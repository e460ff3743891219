"""`jaxcloak warmup`: a preset's common programs compiled before the first job needs them.

A first job otherwise compiles while its user waits. This compiles, into the
persistent caches (compile_cache.py, programs.py), the programs a job on ordinary
photos runs, on synthetic photos of the shapes that decide them:
- detection of one photo at each common aspect ratio (the detector resizes every photo
  to one long side, so an aspect ratio is a shape);
- the cloak loop, the region features and the worst-block check on the canvas every face
  of at least `max_region` pixels is optimised in (a phone photo's face), at each
  compiled batch size (`Cloaker.compiled_size`) up to the preset's batch;
- the JPEG-aware loop, as photos are mostly JPEGs.
Smaller faces (other canvases), other formats and the per-face DSSIM check of the
written file still compile on first use. Nothing here depends on a user's photos.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
from PIL import Image

from jaxcloak.faces import io as photo_io
from jaxcloak.faces import regions as regions_lib
from jaxcloak.faces.align import ARCFACE_TEMPLATE
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.records import Face, Item

# (width, height) of the common photo shapes: camera 4:3 and 3:2, screens 16:9, square.
ASPECTS = ((4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (1, 1))
PHOTO_LONG_SIDE = 1600  # any side the detector resizes from gives its program
JPEG_QUALITY = 90  # a camera's; the tables are data, not shape


def _jpeg(width: int, height: int) -> bytes:
  rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, "JPEG", quality=JPEG_QUALITY)
  return out.getvalue()


def _large_face(item: Item) -> Face:
  """A face centred in the photo whose region is larger than any canvas."""
  h, w = item.photo.rgb.shape[:2]
  scale = 0.7 * min(h, w) / 112.0  # ARCFACE_TEMPLATE is laid out on a 112 px crop
  landmarks = (ARCFACE_TEMPLATE - 56.0) * scale + np.array([w / 2, h / 2], np.float32)
  box = [w / 2 - 56 * scale, h / 2 - 56 * scale, 112 * scale, 112 * scale]
  return Face(box, 1.0, landmarks.astype(np.float32))


def warm_up(cloaker: Cloaker, log=print) -> dict:
  """Runs every common program once; returns seconds per part."""
  seconds = {}
  t = time.perf_counter()
  items = []
  for aw, ah in ASPECTS:
    side = PHOTO_LONG_SIDE / max(aw, ah)
    item = Item(f"warmup-{aw}x{ah}.jpg", _jpeg(round(aw * side), round(ah * side)))
    cloaker.decode(item)
    cloaker.detect([item])
    items.append(item)
  seconds["detection"] = time.perf_counter() - t
  log(f"warmup: detection at {len(ASPECTS)} aspect ratios, {seconds['detection']:.1f} s")

  t = time.perf_counter()
  one_step = cloaker.reconfigured(dataclasses.replace(cloaker.config, steps=1))
  item = items[0]
  sizes = sorted({cloaker.compiled_size(n) for n in range(1, cloaker.batch_size + 1)})
  for size in sizes:
    item.faces = [_large_face(item) for _ in range(size)]
    cloaker.make_regions([item])
    one_step.optimise(item.faces, {})
    cloaker.region_features([f.region for f in item.faces])
  regions_lib.worst_block(item.faces[0].region, item.photo.rgb)
  seconds["cloak"] = time.perf_counter() - t
  log(f"warmup: cloak loop and features at batch sizes {sizes} on the "
      f"{item.faces[0].region.bucket}-px canvas, {seconds['cloak']:.1f} s")
  return seconds
