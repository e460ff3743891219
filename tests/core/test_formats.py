"""Every format in, the same format out: a real cloak of one real face in every writable
format, through the stages every command runs, checked on the written bytes (format,
size, mode, alpha, EXIF, ICC, JPEG tables). An MPO (a camera JPEG with a preview
frame) comes out as a one-frame baseline JPEG, cloaked through the JPEG-aware loss."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from jaxcloak.config import preset
from jaxcloak.faces import io as photo_io
from jaxcloak.faces import regions as regions_lib
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.records import Item
from tests.conftest import ensure_weights

CAMERA = "jaxcloak format test"
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
QUALITY = 85  # the JPEG and the MPO share it, so their loss settings must match exactly

# name -> (format saved, mode saved, save kwargs, written format, carries EXIF).
# Modes vary where the format allows: RGBA (alpha kept) in PNG and WebP, L in TIFF.
CASES = {
    "photo.jpg": ("JPEG", "RGB", dict(quality=QUALITY), "JPEG", True),
    "alpha.png": ("PNG", "RGBA", {}, "PNG", True),
    "alpha.webp": ("WEBP", "RGBA", dict(lossless=True), "WEBP", True),
    "gray.tif": ("TIFF", "L", {}, "TIFF", True),
    "photo.bmp": ("BMP", "RGB", {}, "BMP", False),
    "phone.heic": ("HEIF", "RGB", dict(quality=90), "HEIF", True),
    "phone.avif": ("AVIF", "RGB", dict(quality=90), "AVIF", True),
    "phone.mpo.jpg": ("MPO", "RGB", dict(quality=QUALITY), "JPEG", True),
}


def _source(face: Image.Image, fmt: str, mode: str, kw: dict) -> bytes:
  import pillow_heif  # noqa: F401 (registers the HEIF encoder with PIL)
  im = face.convert(mode)
  if mode == "RGBA":  # a transparent band: alpha must come back exactly
    a = np.asarray(im).copy()
    a[:24, :, 3] = 0
    a[24:40, :, 3] = 128
    im = Image.fromarray(a, "RGBA")
  kw = dict(kw)
  if fmt != "BMP":
    exif = Image.Exif()
    exif[0x010F] = CAMERA
    kw.update(exif=exif.tobytes(), icc_profile=ICC)
  if fmt == "MPO":  # a preview frame, as cameras write it
    kw.update(save_all=True, append_images=[im.resize((64, 64))])
  buf = io.BytesIO()
  im.save(buf, fmt, **kw)
  return buf.getvalue()


@pytest.fixture(scope="module")
def cloaked(faces_dir):
  """Every case cloaked in one run: 8 photos of one 250x250 face = two batches of 4, the
  compiled programs (and XLA cache entries) of the pipeline tests."""
  ensure_weights("dlib")
  ensure_weights("yunet")
  who = sorted(d for d in faces_dir.iterdir() if d.is_dir())[0]
  face = Image.open(sorted(who.glob("*.jpg"))[0])
  face.load()
  items = [Item(name, _source(face, fmt, mode, kw), "alice")
           for name, (fmt, mode, kw, _, _) in CASES.items()]
  engine = Cloaker(preset("low", steps=4, batch_size=4, mode="untargeted"))
  live = stages.decode(engine, items)
  stages.detect(engine, live)
  specs = {it.name: it.faces[0].jpeg if it.faces else None for it in items}
  stages.cloak(engine, live, {})
  return {it.name: it for it in items}, specs, engine


@pytest.mark.parametrize("name", list(CASES))
def test_written_like_its_source(cloaked, name):
  items, _, engine = cloaked
  fmt, mode, _, written_fmt, has_exif = CASES[name]
  it = items[name]
  assert it.status == "cloaked", (it.status, it.message, [f.status for f in it.faces])
  src = Image.open(io.BytesIO(it.data))
  assert src.format == fmt and getattr(src, "n_frames", 1) == (2 if fmt == "MPO" else 1)
  out = Image.open(io.BytesIO(it.output))
  assert it.output_format == written_fmt and out.format == written_fmt
  assert getattr(out, "n_frames", 1) == 1
  assert out.size == src.size and out.mode == mode
  if mode == "RGBA":
    np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(src)[..., 3])
  if has_exif:
    assert out.getexif().get(0x010F) == CAMERA
    assert out.info.get("icc_profile") == ICC
  if written_fmt == "JPEG":  # the source's quality: its own tables and subsampling
    assert out.quantization == src.quantization
    assert out.layer == src.layer
  # The budget holds on the written file, measured here on its bytes.
  written = photo_io.decode(it.output).rgb
  orig = photo_io.decode(it.data).rgb
  for f in it.faces:
    if f.status == "cloaked":
      d = regions_lib.region_dssim(orig, written, f.region.box)
      assert d <= engine.config.budget + 1e-6
  assert not np.array_equal(orig, written)


def test_mpo_cloaked_through_the_jpeg_loss_like_a_jpeg(cloaked):
  _, specs, _ = cloaked
  jpg, mpo, png = specs["photo.jpg"], specs["phone.mpo.jpg"], specs["alpha.png"]
  assert jpg[3] and mpo[3] and not png[3]
  for a, b in zip(jpg, mpo):
    np.testing.assert_array_equal(a, b)
