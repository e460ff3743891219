"""Photo I/O edge: EXIF orientation, metadata, grayscale, alpha, bad input."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from jaxcloak.faces import io as photo_io
from jaxcloak.files import atomic_write


def _jpeg(arr, **kw):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", **kw)
  return buf.getvalue()


def _photo(h=60, w=90):
  rng = np.random.default_rng(0)
  return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def test_exif_orientation_applied_and_reset():
  arr = _photo()
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 CW on display
  exif[0x010F] = "jaxcloak-test-camera"
  data = _jpeg(arr, exif=exif.tobytes(), quality=90)
  p = photo_io.decode(data)
  assert p.rgb.shape == (90, 60, 3)  # upright
  out, fmt = photo_io.encode(p, p.rgb)
  back = Image.open(io.BytesIO(out))
  assert fmt == "JPEG"
  assert back.getexif()[0x010F] == "jaxcloak-test-camera"
  assert back.getexif().get(0x0112, 1) == 1  # not rotated twice
  assert back.size == (60, 90)


def test_icc_and_jpeg_quality_kept_and_strippable():
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  data = _jpeg(_photo(), icc_profile=icc, quality=77)
  p = photo_io.decode(data)
  out, _ = photo_io.encode(p, p.rgb)
  back = Image.open(io.BytesIO(out))
  assert back.info.get("icc_profile") == icc
  assert back.quantization == Image.open(io.BytesIO(data)).quantization
  stripped, _ = photo_io.encode(p, p.rgb, strip_metadata=True)
  assert Image.open(io.BytesIO(stripped)).info.get("icc_profile") is None


def test_grayscale_stays_grayscale():
  gray = _photo()[..., 0]
  buf = io.BytesIO()
  Image.fromarray(gray, "L").save(buf, "PNG")
  p = photo_io.decode(buf.getvalue())
  assert p.grayscale and p.rgb.shape[2] == 3
  out, fmt = photo_io.encode(p, p.rgb)
  back = Image.open(io.BytesIO(out))
  assert back.mode == "L" and fmt == "PNG"
  np.testing.assert_array_equal(np.asarray(back), gray)


def test_alpha_kept():
  rgba = np.concatenate([_photo(), np.full((60, 90, 1), 7, np.uint8)], axis=2)
  rgba[:10, :10, 3] = 255
  buf = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buf, "PNG")
  p = photo_io.decode(buf.getvalue())
  out, _ = photo_io.encode(p, p.rgb)
  back = np.asarray(Image.open(io.BytesIO(out)))
  assert back.shape == (60, 90, 4)
  np.testing.assert_array_equal(back[..., 3], rgba[..., 3])
  np.testing.assert_array_equal(back[..., :3], rgba[..., :3])


@pytest.mark.parametrize("data,status", [
    (b"", "empty_file"),
    (b"this is not an image at all", "not_an_image"),
])
def test_bad_bytes_give_specific_status(data, status):
  with pytest.raises(photo_io.PhotoError) as e:
    photo_io.decode(data, name="x.jpg")
  assert e.value.status == status and "x.jpg" in str(e.value)


def test_truncated_jpeg_is_corrupt():
  data = _jpeg(_photo(200, 200), quality=95)
  with pytest.raises(photo_io.PhotoError) as e:
    photo_io.decode(data[: len(data) // 2], name="cut.jpg")
  assert e.value.status == "corrupt"


def test_decompression_bomb_refused():
  buf = io.BytesIO()
  Image.new("L", (4000, 4000)).save(buf, "PNG")
  with pytest.raises(photo_io.PhotoError) as e:
    photo_io.decode(buf.getvalue(), max_pixels=1_000_000)
  assert e.value.status == "too_large"


def test_atomic_write_leaves_no_partial(tmp_path):
  target = tmp_path / "a" / "b.jpg"
  atomic_write(target, b"abc")
  assert target.read_bytes() == b"abc"
  assert not list(target.parent.glob(".*part"))


def test_mpo_written_as_jpeg_with_its_tables_and_metadata():
  # Cameras write MPO: a JPEG plus preview frames. Its output is a one-frame JPEG
  # (the previews would show the uncloaked face) at the source's quality.
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  exif = Image.Exif()
  exif[0x010F] = "jaxcloak-test-camera"
  buf = io.BytesIO()
  im = Image.fromarray(_photo())
  im.save(buf, "MPO", save_all=True, append_images=[im.resize((30, 20))], quality=77,
          exif=exif.tobytes(), icc_profile=icc)
  src = Image.open(io.BytesIO(buf.getvalue()))
  assert src.format == "MPO" and src.n_frames == 2
  p = photo_io.decode(buf.getvalue())
  assert p.format == "MPO" and p.format in photo_io.WRITABLE_FORMATS
  assert photo_io.written_format(p.format) == "JPEG" and p.jpeg_qtables is not None
  out, fmt = photo_io.encode(p, p.rgb)
  back = Image.open(io.BytesIO(out))
  assert fmt == "JPEG" and back.format == "JPEG" and getattr(back, "n_frames", 1) == 1
  assert back.size == (90, 60) and back.mode == "RGB"
  assert back.quantization == src.quantization and back.layer == src.layer
  assert back.getexif()[0x010F] == "jaxcloak-test-camera"
  assert back.info.get("icc_profile") == icc


def test_unwritable_format_falls_back_to_png():
  assert photo_io.written_format("GIF") == "PNG"
  assert all(photo_io.written_format(f) == f for f in photo_io.WRITABLE_FORMATS - {"MPO"})
