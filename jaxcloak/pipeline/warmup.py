"""`jaxcloak warmup`: a preset's common programs compiled before the first job needs them.

A first job otherwise compiles while its user waits. This compiles, into the
persistent caches (compile_cache.py, programs.py), the programs a job on ordinary
photos runs, on synthetic photos of the shapes that decide them:
- detection at each batch of rows it compiles (every photo is resized to one long side
  and padded square, so photos of any size and aspect ratio share these programs);
- the cloak loop, the region features and the worst-block check on the canvas every face
  of at least `max_region` pixels is optimised in (a phone photo's face), at each
  compiled batch size (`Cloaker.compiled_size`) up to the preset's batch;
- the JPEG-aware loop, as photos are mostly JPEGs.
Smaller faces (other canvases), other formats and the per-face DSSIM check of the
written file still compile on first use. Nothing here depends on a user's photos.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import time

import numpy as np
from PIL import Image

from jaxcloak.faces import regions as regions_lib
from jaxcloak.faces.align import ARCFACE_TEMPLATE
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.records import Face, Item

PHOTO_SIZE = (1600, 1200)  # a camera's 4:3; any size gives the same detection programs
COMPILE_THREADS = 2
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


def _detect(cloaker: Cloaker, n: int) -> Item:
  items = [Item(f"warmup-{i}.jpg", _jpeg(*PHOTO_SIZE)) for i in range(n)]
  for item in items:
    cloaker.decode(item)
  cloaker.detect(items)  # no face in noise: the framed second look runs too
  return items[0]


def _cloak(cloaker: Cloaker, one_step: Cloaker, item: Item, size: int) -> regions_lib.Region:
  item = dataclasses.replace(item, faces=[])
  item.faces = [_large_face(item) for _ in range(size)]
  cloaker.make_regions([item])
  one_step.optimise(item.faces, {})
  cloaker.region_features([f.region for f in item.faces])
  return item.faces[0].region


def warm_up(cloaker: Cloaker, log=print) -> float:
  """Runs every common program once; returns the seconds it took."""
  t = time.perf_counter()
  rows = sorted({1 << (n - 1).bit_length() for n in range(1, cloaker.detector.batch_size + 1)})
  sizes = sorted({cloaker.compiled_size(n) for n in range(1, cloaker.batch_size + 1)})
  one_step = cloaker.reconfigured(dataclasses.replace(cloaker.config, steps=1))
  # XLA compiles outside the GIL: two programs at once use both cores of a small machine.
  with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:
    item = list(pool.map(lambda n: _detect(cloaker, n), rows))[0]
    region = list(pool.map(lambda size: _cloak(cloaker, one_step, item, size), sizes))[0]
  regions_lib.worst_block(region, item.photo.rgb)
  seconds = time.perf_counter() - t
  log(f"warmup: detection of {rows} photos at once; the cloak loop and features at batch "
      f"sizes {sizes} on the {region.bucket}-px canvas: {seconds:.1f} s")
  return seconds
