"""Photo decoding and encoding at the NumPy/PIL edge.

`decode` returns upright RGB uint8 pixels plus everything needed to write the
photo back the way it came: format, JPEG quantisation tables and subsampling
(so the output keeps the input's quality), EXIF (orientation reset, since the
pixels are now upright), ICC profile, grayscale and alpha. `encode` is its
inverse for a cloaked copy of the pixels. Originals are only ever read.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from jaxcloak.config import MAX_PIXELS  # decompression-bomb guard (an EngineSettings default)

try:  # HEIC/HEIF (most phone cameras); Pillow itself reads and writes AVIF
  import pillow_heif
  pillow_heif.register_heif_opener()
except ImportError:  # then HEIC stays `unsupported_format`, with a message saying why
  pillow_heif = None

# Decoded format -> the format its cloaked copy is written in; the one place this rule
# lives (encode, the cloaker's JPEG-aware loss and the status rules all read it). An MPO
# (many cameras: a JPEG plus preview frames) is written as a baseline JPEG of its first
# frame, a valid .jpg; the previews are dropped, as they would show the uncloaked face.
WRITTEN_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "TIFF": "TIFF",
                  "BMP": "BMP", "HEIF": "HEIF", "AVIF": "AVIF"}
WRITABLE_FORMATS = frozenset(WRITTEN_FORMAT)
FALLBACK_JPEG_QUALITY = 95  # a JPEG whose tables cannot be read is written at this
# HEIF and AVIF encoders are lossy and keep no tables to copy. Written with
# full-resolution chroma at these qualities, the re-encode keeps most of a cloak
# (`benchmarks/formats.py`: HEIF 95 keeps ~0.9 of the feature move, AVIF 95 only
# ~0.57 and AVIF 100 ~0.93) at a region DSSIM of its own of 0.001-0.0025; the
# budget is enforced on the written file as for any format.
HEIF_QUALITY = 95
AVIF_QUALITY = 100


def written_format(fmt: str) -> str:
  """The format a photo decoded as `fmt` (a PIL format name) is written in."""
  return WRITTEN_FORMAT.get(fmt, "PNG")


class PhotoError(ValueError):
  """A photo that cannot be cloaked; `status` is the manifest/report status."""

  def __init__(self, status: str, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Photo:
  rgb: np.ndarray  # [h, w, 3] uint8, upright
  format: str  # PIL format name of the source
  mode: str  # PIL mode of the source ("RGB", "L", "RGBA", "LA", "P", ...)
  alpha: np.ndarray | None = None  # [h, w] uint8
  exif: bytes | None = None
  icc_profile: bytes | None = None
  jpeg_qtables: dict | None = None
  jpeg_subsampling: int | None = None
  notes: list = dataclasses.field(default_factory=list)

  @property
  def grayscale(self) -> bool:
    return self.mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")


def decode(data: bytes, *, name: str = "photo", max_pixels: int = MAX_PIXELS) -> Photo:
  """Decodes photo bytes; raises PhotoError with a specific status on bad input."""
  if not data:
    raise PhotoError("empty_file", f"{name}: file is empty (0 bytes)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))
      w, h = im.size
      if w * h > max_pixels:
        raise PhotoError("too_large", f"{name}: {w}x{h} = {w * h:,} pixels exceeds the "
                         f"limit of {max_pixels:,} (decompression-bomb guard)")
      fmt = im.format or "UNKNOWN"
      if getattr(im, "n_frames", 1) > 1 and fmt in ("GIF", "PNG", "WEBP", "MPO", "TIFF"):
        if fmt != "MPO":  # MPO = JPEG with a preview frame; the first frame is the photo
          raise PhotoError("animated", f"{name}: animated {fmt} with {im.n_frames} frames "
                           "is not cloaked (copied unchanged)")
      im.load()
  except PhotoError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise PhotoError("too_large", f"{name}: {e}") from e
  except UnidentifiedImageError as e:
    raise PhotoError("not_an_image", f"{name}: not a decodable image ({e})") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise PhotoError("corrupt", f"{name}: image data is corrupt or truncated ({e})") from e

  exif = None
  notes = []
  try:
    exif_obj = im.getexif()
    upright = ImageOps.exif_transpose(im)
    if 0x0112 in exif_obj:
      exif_obj[0x0112] = 1  # pixels are rotated now; don't let viewers rotate twice
    exif = exif_obj.tobytes() if len(exif_obj) else None
  except Exception as e:  # malformed EXIF must not stop a photo from being cloaked
    notes.append(f"EXIF unreadable, dropped ({type(e).__name__})")
    upright = im
  icc = im.info.get("icc_profile")
  # An MPO's first frame is a JPEG too: its tables are what its output keeps.
  as_jpeg = written_format(fmt) == "JPEG"
  qtables = getattr(im, "quantization", None) if as_jpeg else None
  subsampling = JpegImagePlugin.get_sampling(im) if as_jpeg else None

  mode = im.mode
  alpha = None
  if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
    rgba = upright.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3].copy()
    rgb = np.asarray(rgba.convert("RGB"))
  elif mode in ("I;16", "I;16B", "I;16L", "I"):
    arr = np.asarray(upright).astype(np.float64)
    peak = 65535.0 if arr.max() > 255 else 255.0
    gray = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    notes.append("16-bit image written back as 8-bit")
  elif mode == "CMYK":
    rgb = np.asarray(upright.convert("RGB"))
    notes.append("CMYK converted to RGB")
  else:
    rgb = np.asarray(upright.convert("RGB"))
  h, w = rgb.shape[:2]
  if min(h, w) < 1:
    raise PhotoError("too_small", f"{name}: image has no pixels")
  return Photo(np.ascontiguousarray(rgb), fmt, mode, alpha, exif, icc, qtables, subsampling, notes)


def encode(photo: Photo, rgb: np.ndarray, *, strip_metadata: bool = False,
           jpeg_quality: int | None = None) -> tuple[bytes, str]:
  """Encodes cloaked pixels like the source photo (JPEG: its own tables unless
  `jpeg_quality` is given). Returns (bytes, format)."""
  if photo.grayscale:
    # The cloak on a grayscale photo is optimised on equal channels; keep one.
    im = Image.fromarray(np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8), "L")
  else:
    im = Image.fromarray(rgb, "RGB")
  if photo.alpha is not None:
    im = im.convert("LA" if photo.grayscale else "RGBA")
    im.putalpha(Image.fromarray(photo.alpha, "L"))
  fmt = written_format(photo.format)
  kwargs: dict = {}
  if not strip_metadata:
    if photo.exif:
      kwargs["exif"] = photo.exif
    if photo.icc_profile:
      kwargs["icc_profile"] = photo.icc_profile
  if fmt == "JPEG":
    if im.mode not in ("RGB", "L"):
      im = im.convert("RGB")
    if jpeg_quality is not None:
      kwargs["quality"] = jpeg_quality
    elif photo.jpeg_qtables:
      kwargs["qtables"] = photo.jpeg_qtables
      if photo.jpeg_subsampling is not None and photo.jpeg_subsampling >= 0:
        kwargs["subsampling"] = photo.jpeg_subsampling
    else:
      kwargs["quality"] = FALLBACK_JPEG_QUALITY
  elif fmt == "WEBP":
    kwargs["lossless"] = True  # lossy WebP would eat the cloak; lossless keeps it exact
  elif fmt == "HEIF":
    kwargs.update(quality=HEIF_QUALITY, chroma=444)
  elif fmt == "AVIF":
    kwargs.update(quality=AVIF_QUALITY, subsampling="4:4:4")
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kwargs)
  return buf.getvalue(), fmt
