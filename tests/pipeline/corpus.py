"""Builds the odd-input corpus the migrate tests run on (generated, never committed).

`build(src, faces_dir)` writes a folder of photos covering the bad and odd
inputs an archive holds, and returns {relative path: expected status}. Face
photos are one LFW face at 96 px saved with different JPEG qualities, so every
face region has the same shape (cheap compiles on a 2-core CPU).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FACE_SIDE = 96
GRID = (6, 5)  # columns, rows of the 30-face photo
BOMB_SIDE = 5000  # with max_pixels below BOMB_SIDE**2 the file is refused as a bomb
MAX_PIXELS = 10_000_000


def face_image(faces_dir: Path, side: int = FACE_SIDE) -> Image.Image:
  src = sorted(Path(faces_dir).glob("*/*.jpg"))[0]
  return Image.open(src).convert("RGB").resize((side, side), Image.BILINEAR)


def jpeg(im: Image.Image, **kw) -> bytes:
  b = io.BytesIO()
  im.save(b, "JPEG", **kw)
  return b.getvalue()


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
  import pillow_heif  # noqa: F401 (registers the HEIF encoder with PIL)
  pillow_heif.register_heif_opener()
  b = io.BytesIO()
  im.save(b, fmt, **kw)
  return b.getvalue()


def png(im: Image.Image, **kw) -> bytes:
  b = io.BytesIO()
  im.save(b, "PNG", **kw)
  return b.getvalue()


def noise(side: int, seed: int, mode: str = "RGB") -> Image.Image:
  rng = np.random.default_rng(seed)
  ch = {"RGB": 3, "L": 1}[mode]
  a = (rng.random((side, side, ch)) * 255).astype(np.uint8)
  return Image.fromarray(a[..., 0] if ch == 1 else a, mode)


def with_exif_segment(data: bytes, payload: bytes) -> bytes:
  seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
  return data[:2] + seg + data[2:]


def thirty_faces(face: Image.Image) -> Image.Image:
  cols, rows = GRID
  out = Image.new("RGB", (cols * FACE_SIDE, rows * FACE_SIDE))
  for i in range(cols * rows):
    out.paste(face, ((i % cols) * FACE_SIDE, (i // cols) * FACE_SIDE))
  return out


def write(root: Path, rel: str, data: bytes) -> Path:
  p = root / rel
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_bytes(data)
  return p


def build(src: Path, faces_dir: Path) -> dict[str, str]:
  """Writes the corpus under src; returns {rel: expected status}."""
  face = face_image(faces_dir)
  exp: dict[str, str] = {}

  def add(rel, data, status):
    write(src, rel, data)
    exp[rel] = status

  add("alice/1.jpg", jpeg(face, quality=90), "cloaked")
  add("alice/2.jpg", jpeg(face, quality=93), "cloaked")
  add("alice/copy of 1.jpg", jpeg(face, quality=90), "duplicate")
  add("bob/face.jpg", jpeg(face, quality=95), "cloaked")
  add("bob/face as png.png", jpeg(face, quality=91), "cloaked")  # wrong extension
  add("bob/gray.jpg", jpeg(face.convert("L"), quality=92), "cloaked")
  add("bob/cmyk.jpg", jpeg(face.convert("CMYK"), quality=92), "cloaked")
  rotated = face.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says rotate back
  exif = Image.Exif()
  exif[0x0112] = 6
  add("bob/exif rotated.jpg", jpeg(rotated, quality=92, exif=exif.tobytes()), "cloaked")
  broken = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00" + b"\x00" * 5
  add("bob/broken exif.jpg", with_exif_segment(jpeg(face, quality=89), broken), "cloaked")
  add("Zoë folder/été photo 1.jpg", jpeg(face, quality=88), "cloaked")  # unicode + spaces
  add("crowd/thirty faces.jpg", jpeg(thirty_faces(face), quality=92), "cloaked")
  phone = Image.Exif()
  phone[0x010F] = "jaxcloak test phone"  # Make
  add("phone/IMG_0001.heic", encoded(face, "HEIF", quality=90, exif=phone.tobytes()), "cloaked")
  add("phone/IMG_0002.avif", encoded(face, "AVIF", quality=90, exif=phone.tobytes()), "cloaked")

  add("odd/zero bytes.jpg", b"", "empty_file")
  add("odd/truncated.jpg", jpeg(noise(64, 1), quality=90)[:300], "corrupt")
  add("odd/notes.txt", b"not a photo\n" * 10, "not_an_image")
  add("odd/fake.jpg", b"%PDF-1.4 definitely not a jpeg" * 4, "not_an_image")
  bomb = Image.new("L", (BOMB_SIDE, BOMB_SIDE))
  add("odd/bomb.png", png(bomb, optimize=True), "too_large")
  add("odd/tiny.png", png(noise(8, 2)), "too_small")
  g16 = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
  add("odd/16bit.png", png(Image.fromarray(g16)), "no_face")
  pal = noise(64, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  add("odd/palette transparent.png", png(pal, transparency=0), "no_face")
  frames = [noise(48, s) for s in range(3)]
  b = io.BytesIO()
  frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
  add("odd/animated.gif", b.getvalue(), "animated")
  b = io.BytesIO()
  noise(48, 9).save(b, "GIF")
  add("odd/static.gif", b.getvalue(), "unsupported_format")
  heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + bytes(range(200))
  add("odd/phone.heic", heic, "unsupported_format")
  add("odd/photo.avif", encoded(noise(64, 4), "AVIF"), "no_face")
  add("odd/noise.jpg", jpeg(noise(64, 5)), "no_face")

  # Permissions only bind a non-root user; as root the file reads normally.
  p = write(src, "odd/locked.jpg", jpeg(noise(64, 6)))
  p.chmod(0)
  exp["odd/locked.jpg"] = "unreadable" if os.geteuid() != 0 else "no_face"
  os.symlink("loop", src / "odd" / "loop")
  exp["odd/loop"] = "symlink_loop"
  os.symlink("..", src / "odd" / "up")
  exp["odd/up"] = "symlink_loop"
  os.symlink("/etc/hostname", src / "odd" / "outside")
  exp["odd/outside"] = "symlink_outside"
  os.symlink("gone.jpg", src / "odd" / "dangling")
  exp["odd/dangling"] = "broken_symlink"
  os.mkfifo(src / "odd" / "pipe")
  exp["odd/pipe"] = "not_a_regular_file"
  return exp


def bad_zip(path: Path, faces_dir: Path) -> dict[str, str]:
  """A zip with zip-slip, absolute and symlink members, a CRC-broken member and a face."""
  face = face_image(faces_dir)
  exp = {}
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("carol/face.jpg", jpeg(face, quality=90))
    exp["carol/face.jpg"] = "cloaked"
    zf.writestr("../escape.jpg", jpeg(face, quality=91))
    exp["../escape.jpg"] = "unsafe_path"
    zf.writestr("carol/../../escape2.txt", b"x")
    exp["carol/../../escape2.txt"] = "unsafe_path"
    zf.writestr("/abs/path.txt", b"x")
    exp["/abs/path.txt"] = "unsafe_path"
    info = zipfile.ZipInfo("carol/link")
    info.external_attr = (0o120777 << 16)
    zf.writestr(info, "/etc/passwd")
    exp["carol/link"] = "unsafe_path"
    zf.writestr("carol/notes.txt", b"hello\n")
    exp["carol/notes.txt"] = "not_an_image"
    zf.writestr("carol/crc.bin", b"A" * 1000, compress_type=zipfile.ZIP_STORED)
    exp["carol/crc.bin"] = "unreadable"
  # Flip one stored byte of crc.bin so its CRC check fails on read.
  data = bytearray(path.read_bytes())
  i = data.find(b"A" * 1000)
  data[i + 500] = ord("B")
  path.write_bytes(bytes(data))
  return exp
