"""Face detection with the YuNet port: photos of any size in, boxes and 5 landmarks out.

Photos are uint8 [h, w, 3] RGB (or float in [0, 1], which is quantised to
uint8 first, as a saved photo would be). Each is resized keeping its aspect
so that its long side is `max_side`, padded at the bottom and right to
multiples of 32 (as OpenCV's `FaceDetectorYN` pads), and run in fixed-size
batches, so one shape bucket compiles once. The network and the decoding run
in one jitted function; score threshold and NMS run on the host in NumPy
(see `nms`), and results are mapped back to the photo's own pixels.

Landmarks follow the shared convention: [image-left eye, image-right eye,
nose tip, image-left mouth corner, image-right mouth corner], (x, y) pixels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcloak.models import yunet
from jaxcloak.programs import Program

# OpenCV's FaceDetectorYN defaults (objdetect/face.hpp).
SCORE_THRESHOLD = 0.9
NMS_IOU = 0.3
TOP_K = 5000
MAX_SIDE = 640


@dataclasses.dataclass(frozen=True)
class Detections:
  """Faces found in one photo, best score first, in that photo's pixels."""
  boxes: np.ndarray  # [n, 4] float32 (x, y, w, h), top-left corner and size
  scores: np.ndarray  # [n] float32 in [0, 1]
  landmarks: np.ndarray  # [n, 5, 2] float32 (x, y)

  def __len__(self) -> int:
    return len(self.scores)

  @property
  def centres(self) -> np.ndarray:
    """[n, 2] box centres (x, y)."""
    return self.boxes[:, :2] + self.boxes[:, 2:] / 2.0

  def nearest(self, point, max_distance: float = np.inf) -> int | None:
    """Index of the face whose box centre is nearest `point` (x, y), if within `max_distance`."""
    if not len(self):
      return None
    d = np.linalg.norm(self.centres - np.asarray(point, np.float32), axis=1)
    i = int(np.argmin(d))
    return i if d[i] <= max_distance else None

  def largest(self) -> int | None:
    """Index of the face a portrait is about: the largest box (None if no face)."""
    if len(self.scores) == 0:
      return None
    return int(np.argmax(self.boxes[:, 2] * self.boxes[:, 3]))

  def take(self, index) -> "Detections":
    index = np.atleast_1d(np.asarray(index, np.int64))
    return Detections(self.boxes[index], self.scores[index], self.landmarks[index])


def _int_rect_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
  """IoU of one integer (x, y, w, h) rect with many, as cv::Rect2i's `&` and area()."""
  x1 = np.maximum(box[0], others[:, 0])
  y1 = np.maximum(box[1], others[:, 1])
  x2 = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
  y2 = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
  inter = np.where((x2 > x1) & (y2 > y1), (x2 - x1) * (y2 - y1), 0).astype(np.float64)
  union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float = SCORE_THRESHOLD,
        iou_threshold: float = NMS_IOU, top_k: int = TOP_K) -> np.ndarray:
  """Greedy NMS exactly as `cv::dnn::NMSBoxes` on the `Rect2i` boxes FaceDetectorYN builds.

  Runs on the host: the kept count is data-dependent, the candidates after the
  score threshold are few (tens), and NumPy gives OpenCV's exact greedy order
  (stable descending sort, top-k before suppression, boxes truncated to int)
  without padding to a worst case inside jit.

  Args:
    boxes: [n, 4] (x, y, w, h) float.
    scores: [n] float.
    score_threshold: candidates need score > this (NMSBoxes is strict).
    iou_threshold: a candidate is dropped if its IoU with a kept box exceeds this.
    top_k: at most this many best candidates enter suppression.

  Returns:
    [m] int64 indices into `boxes`, best first.
  """
  cand = np.flatnonzero(scores > score_threshold)
  cand = cand[np.argsort(-scores[cand], kind="stable")][:top_k]
  rects = np.trunc(boxes[cand]).astype(np.int64)  # C++ int() truncates toward zero
  keep: list[int] = []
  for i in range(len(cand)):
    if keep and np.any(_int_rect_iou(rects[i], rects[keep]) > iou_threshold):
      continue
    keep.append(i)
  return cand[np.asarray(keep, np.int64)]


def _padded(n: int) -> int:
  return -(-n // yunet.DIVISOR) * yunet.DIVISOR


def _to_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected an [h, w, 3] RGB image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  return np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


class Detector:
  """YuNet detector: loads weights and builds the jitted network + decoding once.

  `__call__` takes a list of photos of any sizes and returns one `Detections`
  per photo. Photos are grouped by padded shape and run `batch_size` at a
  time (the last batch padded with blank images), so each shape bucket
  compiles exactly once per `Detector`.
  """

  def __init__(self, params=None, *, weights_dir: Path | None = None,
               score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
               top_k: int = TOP_K, max_side: int | None = MAX_SIDE, batch_size: int = 8,
               upscale: bool = True):
    if params is None:
      params = yunet.load(weights_dir).params
    self.params = params
    self.score_threshold = score_threshold
    self.nms_iou = nms_iou
    self.top_k = top_k
    self.max_side = max_side
    self.upscale = upscale
    self.batch_size = batch_size
    model = yunet.Model()

    def forward(params, images):  # [b, H, W, 3] uint8 -> decoded anchors
      x = yunet.preprocess(images.astype(jnp.float32) / 255.0)
      out = model.apply({"params": params}, x)
      return yunet.decode(out, images.shape[1], images.shape[2])

    self._forward = Program(jax.jit(forward), "yunet.forward")

  def _target_size(self, h: int, w: int) -> tuple[int, int]:
    """(height, width) after resizing so the long side is `max_side` (aspect kept)."""
    if self.max_side is None:
      return h, w
    # upscale=False only shrinks: 5x faster on small photos, but on 250 px LFW
    # photos YuNet then finds 99.13% of faces instead of 99.71%.
    scale = min(1.0, self.max_side / max(h, w)) if not self.upscale else self.max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))

  def resize(self, image: np.ndarray) -> np.ndarray:
    """The photo as the network sees it (before padding): uint8 [h', w', 3]."""
    image = _to_uint8(image)
    h, w = self._target_size(*image.shape[:2])
    if (h, w) == image.shape[:2]:
      return image
    # PIL's bilinear filter widens its support when shrinking, so downscaling is antialiased.
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

  def run_padded(self, batch: np.ndarray):
    """[b, H, W, 3] uint8, H and W multiples of 32 -> decoded (boxes, landmarks, scores) arrays."""
    return jax.device_get(self._forward(self.params, jnp.asarray(batch)))

  def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
    results = self._detect(images)
    # A face that fills the frame (a close-up, a selfie, a tight crop) is larger
    # than any YuNet anchor sees at 640 px: photos with no face get a second look
    # framed in a canvas three times their size, where the face is a third as large.
    missing = [i for i, r in enumerate(results) if not len(r)]
    if self.max_side is None:
      return results
    for start in range(0, len(missing), self.batch_size):  # memory: one batch of canvases
      part = missing[start:start + self.batch_size]
      framed = [_framed(images[i], self.max_side) for i in part]
      for i, (_, offset, scale), found in zip(part, framed,
                                              self._detect([c for c, _, _ in framed])):
        results[i] = _unframed(found, offset, scale, np.shape(images[i])[:2])
    return results

  def _detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
    sizes = [self._target_size(*np.shape(im)[:2]) for im in images]
    # Every photo is padded to the square of its long side: photos of every aspect ratio
    # then share one program (at `max_side` with upscaling, one for all photos), where a
    # program per padded shape cost a first job about 2 s of compiling per new shape.
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
      side = _padded(max(h, w))
      buckets.setdefault((side, side), []).append(i)

    results: list[Detections | None] = [None] * len(images)
    for (ph, pw), members in buckets.items():
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        # The smallest power of two of rows that holds the chunk: a blank row costs what
        # a photo costs, and rows are independent, so this changes no detection.
        rows = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())
        batch = np.zeros((rows, ph, pw, 3), np.uint8)  # padding rows stay blank
        for j, i in enumerate(chunk):
          im = self.resize(images[i])  # resized per batch so memory stays one batch deep
          batch[j, :im.shape[0], :im.shape[1]] = im
        boxes, kps, scores = self.run_padded(batch)
        for j, i in enumerate(chunk):
          keep = nms(boxes[j], scores[j], score_threshold=self.score_threshold,
                     iou_threshold=self.nms_iou, top_k=self.top_k)
          h, w = np.shape(images[i])[:2]
          scale = np.array([sizes[i][1] / w, sizes[i][0] / h], np.float32)  # (x, y)
          b = boxes[j][keep].astype(np.float32)
          b = np.concatenate([b[:, :2] / scale, b[:, 2:] / scale], axis=1)
          results[i] = Detections(b, scores[j][keep].astype(np.float32),
                                  (kps[j][keep] / scale).astype(np.float32))
    return results  # type: ignore[return-value]


def _framed(image: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int], float]:
  """The photo, its long side scaled to a third of `side`, centred in a `side`-square
  canvas filled with its mean colour (at twice the photo's size, or with its edges
  replicated, YuNet missed 1-3 of 8 tight LFW crops; this finds all 8). Returns the
  canvas, the photo's (x, y) offset in it and the scale applied: a canvas is
  never larger than the detector's input, whatever the photo's size."""
  image = _to_uint8(image)
  h, w = image.shape[:2]
  scale = (side // 3) / max(h, w)
  sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
  small = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
  oy, ox = (side - sh) // 2, (side - sw) // 2
  canvas = np.empty((side, side, 3), np.uint8)
  canvas[:] = small.reshape(-1, 3).mean(axis=0).astype(np.uint8)
  canvas[oy:oy + sh, ox:ox + sw] = small
  return canvas, (ox, oy), scale


def _unframed(found: Detections, offset: tuple[int, int], scale: float,
              shape: tuple[int, int]) -> Detections:
  """Detections in a `_framed` canvas, back in the photo's pixels: faces whose box
  centre lies in the photo."""
  shift = np.asarray(offset, np.float32)
  boxes = found.boxes.copy()
  boxes[:, :2] -= shift
  moved = Detections(boxes / scale, found.scores, (found.landmarks - shift) / scale)
  h, w = shape
  c = moved.centres
  inside = np.flatnonzero((c[:, 0] >= 0) & (c[:, 0] < w) & (c[:, 1] >= 0) & (c[:, 1] < h))
  return moved.take(inside)


def detect(images: Sequence[np.ndarray], *, params=None, weights_dir: Path | None = None,
           score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
           top_k: int = TOP_K, max_side: int | None = MAX_SIDE,
           batch_size: int = 8) -> list[Detections]:
  """Detects faces in photos; builds a one-off `Detector` (keep a `Detector` to reuse compiles).

  Args:
    images: photos, each [h, w, 3] RGB uint8 (or float in [0, 1]).
    params: YuNet params; loaded from `weights_dir` if None.
    weights_dir: where `yunet.safetensors` lives (default weights dir if None).
    score_threshold: minimum face score in [0, 1].
    nms_iou: IoU above which a lower-scored overlapping box is dropped.
    top_k: candidates kept before NMS.
    max_side: each photo is resized so its long side is this (None: native size).
    batch_size: photos per compiled batch.

  Returns:
    One `Detections` per photo, in the photo's own pixel coordinates.
  """
  return Detector(params, weights_dir=weights_dir, score_threshold=score_threshold,
                  nms_iou=nms_iou, top_k=top_k, max_side=max_side,
                  batch_size=batch_size)(images)
