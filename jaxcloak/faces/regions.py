"""Face regions: the native-resolution patches a cloak is optimised on.

A face's region is the bounding box of every extractor's aligned crop
footprint (the pixels some model actually sees), padded by a small margin and
clipped to the photo. It is stored square-padded into a bucket side so that a
run over thousands of photos compiles once per bucket. Regions larger than
`max_region` are optimised downscaled and their perturbation is upsampled back.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

import jax

from jaxcloak.faces.align import CANONICAL_TEMPLATE, similarity_transform
from jaxcloak import losses
from jaxcloak import programs

BUCKETS = (64, 96, 128, 160, 192, 256, 320, 384, 448, 512)


@dataclasses.dataclass
class Region:
  box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels (exclusive end)
  scale: float  # patch pixels per photo pixel (1.0 = native)
  bucket: int  # padded square side of the patch
  patch: np.ndarray  # [bucket, bucket, 3] float32 in [0, 1], zero padded
  mask: np.ndarray  # [bucket, bucket] float32, 1 inside the region
  affines: list  # per extractor [2, 3] float32, patch pixels -> crop pixels
  canonical: np.ndarray | None = None  # [2, 3] float32, patch pixels -> canonical face frame

  @property
  def patch_shape(self) -> tuple[int, int]:
    """(height, width) of the region inside its padded patch."""
    rows, cols = np.nonzero(self.mask.any(axis=1))[0], np.nonzero(self.mask.any(axis=0))[0]
    return int(rows[-1]) + 1, int(cols[-1]) + 1


def bucket_for(side: int, buckets: Sequence[int] = BUCKETS) -> int:
  for b in buckets:
    if side <= b:
      return b
  return buckets[-1]


def _crop_footprint(m: np.ndarray, size: int) -> np.ndarray:
  """Photo-pixel corners of the crop that affine m (photo -> crop) samples."""
  a = np.vstack([m, [0.0, 0.0, 1.0]])
  inv = np.linalg.inv(a)[:2]
  corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
  return corners @ inv.T


def face_region(rgb: np.ndarray, landmarks: np.ndarray, extractors, *,
                max_region: int = 512, margin: float = 0.05, grid: int = 1,
                side: int | None = None) -> Region:
  """Cuts the region for one face.

  Args:
    rgb: [h, w, 3] uint8 photo.
    landmarks: [5, 2] YuNet-order landmarks in photo pixels.
    extractors: the models whose crops the region must cover.
    grid: the region's top-left corner is moved onto multiples of this (a
      JPEG output's MCU size, so the patch's 8x8 blocks are the encoder's).
    side: resample every region to this patch side, up or down (a person's
      faces then share one compiled batch); None = native up to max_region.
  """
  h, w = rgb.shape[:2]
  photo_affines = [similarity_transform(landmarks, e.template).astype(np.float64)
                   for e in extractors]
  pts = np.concatenate([_crop_footprint(m, e.input_size)
                        for m, e in zip(photo_affines, extractors)])
  (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
  pad = margin * max(x1 - x0, y1 - y0)
  x0, y0 = int(max(0, np.floor(x0 - pad))), int(max(0, np.floor(y0 - pad)))
  x0, y0 = x0 - x0 % grid, y0 - y0 % grid
  x1, y1 = int(min(w, np.ceil(x1 + pad))), int(min(h, np.ceil(y1 + pad)))
  span = max(x1 - x0, y1 - y0)
  scale = side / span if side else min(1.0, max_region / span)
  pw, ph = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
  bucket = side or bucket_for(max(pw, ph))
  crop = rgb[y0:y1, x0:x1]
  if scale != 1.0:
    crop = np.asarray(Image.fromarray(crop).resize((pw, ph), Image.BILINEAR))
  patch = np.zeros((bucket, bucket, 3), np.float32)
  patch[:ph, :pw] = crop.astype(np.float32) / 255.0
  mask = np.zeros((bucket, bucket), np.float32)
  mask[:ph, :pw] = 1.0
  # patch pixel p = scale * (photo pixel - origin); crop = M_photo @ photo pixel.
  to_photo = np.array([[1 / scale, 0, x0], [0, 1 / scale, y0], [0, 0, 1]], np.float64)
  affines = [(np.vstack([m, [0, 0, 1]]) @ to_photo)[:2].astype(np.float32)
             for m in photo_affines]
  canonical = similarity_transform((landmarks - [x0, y0]) * scale, CANONICAL_TEMPLATE)
  return Region((x0, y0, x1, y1), scale, bucket, patch, mask, affines,
                canonical.astype(np.float32))


def paste(rgb: np.ndarray, region: Region, cloaked_patch: np.ndarray,
          strength: float = 1.0) -> np.ndarray:
  """Writes a cloaked patch back into a copy of the photo (uint8).

  `strength` < 1 shrinks the perturbation, used when a re-encoded file would
  exceed the DSSIM budget.
  """
  x0, y0, x1, y1 = region.box
  out = rgb.copy()
  orig = rgb[y0:y1, x0:x1].astype(np.float32)
  ph, pw = region.patch_shape
  delta = (cloaked_patch[:ph, :pw] - region.patch[:ph, :pw]) * 255.0
  if region.scale != 1.0:
    delta = np.stack([np.asarray(Image.fromarray(delta[..., c], "F").resize(
        (x1 - x0, y1 - y0), Image.BILINEAR)) for c in range(3)], axis=-1)
  out[y0:y1, x0:x1] = np.clip(np.round(orig + strength * delta), 0, 255).astype(np.uint8)
  return out


def hold_cap(original: np.ndarray, rgb: np.ndarray, cap: float) -> np.ndarray:
  """`rgb` with every pixel within `cap` (of 1.0, whole levels) of `original`: faces
  pasted one after another add their changes where their regions overlap."""
  levels = int(cap * 255 + 1e-6)
  change = np.clip(rgb.astype(np.int16) - original, -levels, levels)
  return (original + change).astype(np.uint8)


@programs.saved("regions.masked_dssim")
def _masked_dssim(a, b, mask):
  return losses.dssim(a[None], b[None], mask[None])[0]


def region_dssim(original: np.ndarray, written: np.ndarray, box) -> float:
  """DSSIM between two uint8 photos over one region, as dm_pix computes it on the crop
  (`losses.dssim`'s masking rule, the loop's).

  Regions are zero-padded to multiples of 64 so that checking many faces of
  different sizes compiles a handful of times, not once per face.
  """
  x0, y0, x1, y1 = box
  h, w = y1 - y0, x1 - x0
  if min(h, w) < 11:  # too small for an 11x11 SSIM window
    a = original[y0:y1, x0:x1].astype(np.float32) / 255.0
    return float(np.mean(np.abs(a - written[y0:y1, x0:x1].astype(np.float32) / 255.0)))
  ph, pw = -(-h // 64) * 64, -(-w // 64) * 64
  a = np.zeros((ph, pw, 3), np.float32)
  b = np.zeros((ph, pw, 3), np.float32)
  a[:h, :w] = original[y0:y1, x0:x1] / np.float32(255.0)
  b[:h, :w] = written[y0:y1, x0:x1] / np.float32(255.0)
  mask = np.zeros((ph, pw), np.float32)
  mask[:h, :w] = 1.0
  return float(_masked_dssim(a, b, mask))


def recut(region: Region, rgb: np.ndarray) -> Region:
  """The same region geometry cut from another version of the photo (e.g. as written)."""
  x0, y0, x1, y1 = region.box
  crop = rgb[y0:y1, x0:x1]
  ph, pw = region.patch_shape
  if region.scale != 1.0:
    crop = np.asarray(Image.fromarray(crop).resize((pw, ph), Image.BILINEAR))
  patch = np.zeros_like(region.patch)
  patch[:ph, :pw] = crop.astype(np.float32) / 255.0
  return dataclasses.replace(region, patch=patch)


@programs.saved("regions.worst_block")
def _worst_block(a, b, mask):
  _, tiles = losses.visibility(a[None], b[None], mask[None], losses.block_size(a.shape[0]))
  return losses.worst_block(tiles)[0]


def worst_block(region: Region, written: np.ndarray) -> float:
  """The worst block's DSSIM of a written photo over a region, as the loop measures it.

  Measured on the region's own patch geometry (bucket, mask, tile size), so the
  cap means the same thing in the optimisation and on the file.
  """
  return float(_worst_block(region.patch, recut(region, written).patch, region.mask))
