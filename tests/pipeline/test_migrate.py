"""`jaxcloak migrate`: every input accounted for, SRC untouched, resume after SIGKILL, bounded memory.

Tiny cloak settings (2 steps, batch 4, regions downscaled to 64 px) keep the
real engine cheap on a 2-core CPU; one Cloaker is shared by the module and its
compiles are kept in a persistent JAX cache that the subprocess tests reuse.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcloak.config import CloakConfig, EngineSettings
from jaxcloak.paths import OverlapError
from jaxcloak.pipeline import migrate as mig
from jaxcloak.pipeline.manifest import Manifest, sha256_file
from tests.conftest import ROOT
from tests.pipeline import corpus

CONFIG = CloakConfig(mode="untargeted", steps=2, batch_size=4, max_region=64)
OPTIONS = mig.Options(max_faces=8, chunk=8)
SETTINGS = EngineSettings(max_pixels=corpus.MAX_PIXELS, detect_side=576)
JOB = dict(options=OPTIONS, settings=SETTINGS)  # how the job walks, how its engine reads
# Pipeline mechanics, not the cloak family: per-pixel noise, as CONFIG.
CLI_FLAGS = ["--mode", "untargeted", "--extractors", "dlib", "--views", "0", "--steps", "2",
             "--perturbation", "pixels",
             "--batch-size", "4", "--max-region", "64",
             "--detect-side", "576", "--max-faces", "8", "--max-pixels", str(corpus.MAX_PIXELS)]


@pytest.fixture(scope="module")
def cloaker(jax_cache):
  from jaxcloak.pipeline.cloaker import Cloaker
  return Cloaker(CONFIG, SETTINGS)


def snapshot(root: Path) -> dict:
  """path -> (mode, sha256 or link target) for everything under root, without following links."""
  out = {}
  for d, dirs, files in os.walk(root):
    for name in dirs + files:
      p = Path(d) / name
      st = os.lstat(p)
      if p.is_symlink():
        out[str(p)] = (st.st_mode, os.readlink(p))
      elif p.is_file():
        os.chmod(p, st.st_mode | 0o400)  # the locked file: read it as its owner would
        out[str(p)] = (st.st_mode, sha256_file(p))
        os.chmod(p, st.st_mode)
      else:
        out[str(p)] = (st.st_mode, None)
  return out


@pytest.fixture(scope="module")
def migrated(tmp_path_factory, faces_dir, cloaker):
  """The corpus migrated in one uninterrupted in-process run."""
  root = tmp_path_factory.mktemp("corpus")
  expected = corpus.build(root / "src", faces_dir)
  before = snapshot(root / "src")
  logs = []
  summary = mig.migrate(root / "src", root / "dst", CONFIG, **JOB,
                        make_cloaker=lambda: cloaker, progress=False, log=logs.append,
                        log_every=0.0)
  return root, expected, before, summary, logs


def records(dst: Path) -> dict[str, dict]:
  return Manifest(dst / mig.META_DIR / "manifest.jsonl").load()


def test_every_odd_input_gets_its_status(migrated):
  root, expected, _, summary, logs = migrated
  recs = records(root / "dst")
  assert len(expected) >= 28
  assert set(recs) == set(expected)
  got = {k: recs[k]["status"] for k in expected}
  assert got == expected
  for rel, rec in recs.items():
    if rec["status"] not in ("cloaked", "no_face", "duplicate"):
      assert rec["message"] and rel.split("/")[-1] in rec["message"]
  crowd = recs["crowd/thirty faces.jpg"]
  assert crowd["faces"] == 30 and crowd["face_status"] == {"cloaked": 8, "over_cap": 22}
  assert any("extension .png" in n for n in recs["bob/face as png.png"]["notes"])
  assert any("EXIF damaged" in n for n in recs["bob/broken exif.jpg"]["notes"])
  assert recs["alice/copy of 1.jpg"]["duplicate_of"] == "alice/1.jpg"
  assert summary["by_status"]["cloaked"] == 12 and summary["inputs"] == len(expected)
  assert 0 < summary["mean_dssim"] <= CONFIG.budget
  assert any("photos/s" in line for line in logs)  # periodic log lines when not a terminal


def test_outputs_complete_and_src_untouched(migrated):
  root, expected, before, _, _ = migrated
  src, dst = root / "src", root / "dst"
  assert snapshot(src) == before
  assert sorted(p.name for p in root.iterdir()) == ["dst", "src"]  # nothing written beside DST
  recs = records(dst)
  for rel, rec in recs.items():
    if rec["output"] is None:
      assert not (dst / rel).exists() and not (dst / rel).is_symlink()
      continue
    out = dst / rec["output"]
    assert rec["output"] == rel and sha256_file(out) == rec["sha256_out"]
    if rec["status"] == "cloaked":
      with Image.open(out) as im, Image.open(src / rel) as orig:
        assert im.format == orig.format
      assert rec["sha256_out"] != rec["sha256"] and rec["dssim"] <= CONFIG.budget
    elif rec["status"] != "duplicate":
      assert rec["sha256_out"] == rec["sha256"]  # exact copy
  with Image.open(dst / "bob/exif rotated.jpg") as im:
    assert im.size == (corpus.FACE_SIDE, corpus.FACE_SIDE)  # upright, orientation reset
  # Phone photos: cloaked in their own format (checked above), EXIF carried over.
  for rel, fmt in (("phone/IMG_0001.heic", "HEIF"), ("phone/IMG_0002.avif", "AVIF")):
    assert recs[rel]["status"] == "cloaked" and recs[rel]["dssim"] <= CONFIG.budget
    with Image.open(dst / rel) as im:
      assert im.format == fmt and im.getexif().get(0x010F) == "jaxcloak test phone", rel
  assert not list(dst.rglob("*.part"))


def test_second_run_does_nothing(migrated, cloaker):
  root, *_ = migrated
  manifest = root / "dst" / mig.META_DIR / "manifest.jsonl"
  size = manifest.stat().st_size
  logs = []
  s = mig.migrate(root / "src", root / "dst", CONFIG, **JOB,
                  make_cloaker=lambda: pytest.fail("nothing should be computed"),
                  progress=False, log=logs.append)
  assert s["nothing_to_do"] and s["migrated_now"] == 0 and s["already_done"] == s["inputs"]
  assert any("nothing to do" in line for line in logs)
  assert manifest.stat().st_size == size


def test_other_settings_refused(migrated):
  root, *_ = migrated
  other = CloakConfig(mode="untargeted", steps=3, batch_size=4, max_region=64)
  with pytest.raises(mig.MigrateError, match="other settings"):
    mig.migrate(root / "src", root / "dst", other, **JOB, progress=False)
  with pytest.raises(OverlapError, match="inside input"):  # jaxcloak.paths, every entry point's
    mig.migrate(root / "src", root / "src" / "out", CONFIG, **JOB, progress=False)


def test_missing_or_changed_output_is_redone(migrated, cloaker):
  root, *_ = migrated
  dst = root / "dst"
  (dst / "odd/noise.jpg").unlink()
  (dst / "odd/notes.txt").write_bytes(b"tampered")
  s = mig.migrate(root / "src", dst, CONFIG, **JOB, make_cloaker=lambda: cloaker,
                  progress=False, log=lambda m: None)
  assert s["migrated_now"] == 2 and s["by_status"] == {"no_face": 1, "not_an_image": 1}
  assert (dst / "odd/notes.txt").read_bytes() == (root / "src/odd/notes.txt").read_bytes()


def test_zip_slip_and_bad_members(tmp_path, faces_dir, cloaker):
  expected = corpus.bad_zip(tmp_path / "in.zip", faces_dir)
  s = mig.migrate(tmp_path / "in.zip", tmp_path / "out" / "dst", CONFIG, **JOB,
                  make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  recs = records(tmp_path / "out" / "dst")
  assert {k: r["status"] for k, r in recs.items()} == expected
  assert s["inputs"] == len(expected)
  written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                   if p.is_file() and mig.META_DIR not in p.parts)
  assert written == ["in.zip", "out/dst/carol/face.jpg", "out/dst/carol/notes.txt"]


def test_tar_members(tmp_path, faces_dir, cloaker):
  face = corpus.jpeg(corpus.face_image(faces_dir), quality=90)
  with tarfile.open(tmp_path / "in.tar.gz", "w:gz") as tf:
    for name, data in [("dave/face.jpg", face), ("../evil.jpg", face), ("dave/a.txt", b"a")]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
    link = tarfile.TarInfo("dave/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tf.addfile(link)
  mig.migrate(tmp_path / "in.tar.gz", tmp_path / "dst", CONFIG, **JOB,
              make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  got = {k: r["status"] for k, r in records(tmp_path / "dst").items()}
  assert got == {"dave/face.jpg": "cloaked", "../evil.jpg": "unsafe_path",
                 "dave/a.txt": "not_an_image", "dave/link": "unsafe_path"}
  assert not (tmp_path / "evil.jpg").exists()


def test_manifest_torn_line(tmp_path):
  m = Manifest(tmp_path / "m.jsonl")
  m.append({"input": "a", "status": "no_face"})
  m.append({"input": "b", "status": "no_face"})
  m.close()
  with open(m.path, "ab") as f:
    f.write(b'{"input": "c", "sta')  # a kill mid-write
  assert set(m.load()) == {"a", "b"}
  m.append({"input": "c", "status": "cloaked"})  # reopens, trimming the torn line first
  m.close()
  assert m.load()["c"]["status"] == "cloaked"
  assert all(json.loads(line) for line in m.path.read_text().splitlines())


def _cli(src, dst, cache, *extra):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return [sys.executable, "-m", "jaxcloak", "migrate", str(src), str(dst), *CLI_FLAGS,
          "--chunk", "4", "--compile-cache", str(cache), "--log-every", "0", *extra], env


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, faces_dir, migrated, jax_cache):
  root, expected, *_ = migrated
  src, dst = tmp_path / "src", tmp_path / "dst"
  corpus.build(src, faces_dir)
  manifest = dst / mig.META_DIR / "manifest.jsonl"
  cmd, env = _cli(src, dst, jax_cache)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  killed_at = None
  while time.time() < deadline and proc.poll() is None:
    recs = list(Manifest(manifest).records()) if manifest.exists() else []
    if any(r["status"] == "cloaked" for r in recs):
      proc.send_signal(signal.SIGKILL)
      killed_at = len(recs)
      break
    time.sleep(0.02)
  proc.wait()
  assert killed_at is not None, proc.stdout.read().decode()[-3000:]
  assert killed_at < len(expected)
  # Resume: finishes without redoing what the manifest has as done.
  done_before = set(Manifest(manifest).load())
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["already_done"] == len(done_before)
  assert summary["migrated_now"] == len(expected) - len(done_before)
  resumed, reference = records(dst), records(root / "dst")
  assert list(Manifest(manifest).records())[-1]  # every line parses
  assert len(list(Manifest(manifest).records())) == len(expected)  # nothing recorded twice
  assert set(resumed) == set(reference)
  for rel, ref in reference.items():
    got = resumed[rel]
    assert (got["status"], got["sha256"], got["output"]) == (ref["status"], ref["sha256"], ref["output"]), rel
    if got["output"]:
      assert sha256_file(dst / rel) == got["sha256_out"]
      if ref["status"] not in ("cloaked", "duplicate"):
        assert got["sha256_out"] == ref["sha256_out"]
  assert not list(dst.rglob("*.part"))
  again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
  assert json.loads(again.stdout.strip().splitlines()[-1])["nothing_to_do"]
  assert "nothing to do" in again.stderr


def test_memory_bounded_by_chunk_not_archive(tmp_path, cloaker):
  """A zip of 240 noise photos (~47 MB) migrates with < 16 MB of traced Python/NumPy memory."""
  rng = np.random.default_rng(0)
  total = 0
  with zipfile.ZipFile(tmp_path / "big.zip", "w", compression=zipfile.ZIP_STORED) as zf:
    for i in range(240):
      b = io.BytesIO()
      Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(b, "PNG")
      zf.writestr(f"u{i % 4}/{i:05d}.png", b.getvalue())
      total += len(b.getvalue())
  from jaxcloak.pipeline.cloaker import Cloaker
  opts, small = mig.Options(chunk=8), EngineSettings(detect_side=64)
  engine = Cloaker(CONFIG, small)  # built before tracing: its weights
  tracemalloc.start()
  try:
    s = mig.migrate(tmp_path / "big.zip", tmp_path / "dst", CONFIG, options=opts,
                    settings=small, make_cloaker=lambda: engine, progress=False, log=lambda m: None)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert s["by_status"] == {"no_face": 240}
  assert total > 40e6
  assert peak < 16e6, f"peak {peak / 1e6:.1f} MB for a {total / 1e6:.0f} MB archive"


class _FailingCloaker:
  """The real cloaker whose optimisation raises: an engine bug mid-archive."""

  def __init__(self, cloaker):
    self._c = cloaker

  def __getattr__(self, name):
    return getattr(self._c, name)

  def cloak_items(self, items, *a, **k):
    if any(it.faces for it in items):
      raise RuntimeError("simulated engine failure")


def test_engine_failure_copies_and_is_retried(tmp_path, faces_dir, cloaker):
  face = corpus.face_image(faces_dir)
  corpus.write(tmp_path / "src", "u/a.jpg", corpus.jpeg(face, quality=90))
  corpus.write(tmp_path / "src", "u/b.jpg", corpus.jpeg(face, quality=90))  # duplicate of a
  corpus.write(tmp_path / "src", "u/n.txt", b"text")
  kw = dict(**JOB, progress=False, log=lambda m: None)
  s = mig.migrate(tmp_path / "src", tmp_path / "dst", CONFIG,
                  make_cloaker=lambda: _FailingCloaker(cloaker), **kw)
  assert s["by_status"] == {"error": 2, "not_an_image": 1}
  recs = records(tmp_path / "dst")
  assert "simulated engine failure" in recs["u/a.jpg"]["message"]
  assert (tmp_path / "dst/u/a.jpg").read_bytes() == (tmp_path / "src/u/a.jpg").read_bytes()
  s = mig.migrate(tmp_path / "src", tmp_path / "dst", CONFIG, make_cloaker=lambda: cloaker, **kw)
  assert s["by_status"] == {"cloaked": 1, "duplicate": 1} and s["already_done"] == 1


@pytest.mark.slow  # ~20 s: compiles the targeted cloak and the feature function
def test_targets_recorded_and_reused(tmp_path, faces_dir, jax_cache):
  from jaxcloak.pipeline.cloaker import Cloaker
  from jaxcloak.pipeline.local import pool_features
  config = CloakConfig(mode="targeted", steps=1, batch_size=4, max_region=64)
  ids = sorted(d for d in faces_dir.iterdir() if d.is_dir())[1:4]
  for d in ids:
    for f in sorted(d.glob("*.jpg"))[:2]:
      corpus.write(tmp_path / "pool", f"{d.name}/{f.name}", f.read_bytes())
  face = corpus.face_image(faces_dir)
  for rel, q in [("alice/1.jpg", 90), ("alice/2.jpg", 92), ("bob/1.jpg", 94)]:
    corpus.write(tmp_path / "src", rel, corpus.jpeg(face, quality=q))
  c = Cloaker(config, SETTINGS)
  pool = pool_features(c, tmp_path / "pool", cache_dir=tmp_path / "cache", log=lambda m: None)
  kw = dict(**JOB, make_cloaker=lambda: c, pool=pool, progress=False,
            log=lambda m: None)
  mig.migrate(tmp_path / "src", tmp_path / "dst", config, **kw)
  state_path = tmp_path / "dst" / mig.META_DIR / "state.json"
  targets = json.loads(state_path.read_text())["targets"]
  assert set(targets) == {"alice", "bob"} and set(targets.values()) <= set(pool.names)
  recs = records(tmp_path / "dst")
  assert all(r["status"] == "cloaked" and r["target"] == targets[r["user"]] for r in recs.values())
  # A later run reuses the recorded target even where it would now choose another.
  other = next(n for n in pool.names if n != targets["alice"])
  state = json.loads(state_path.read_text())
  state["targets"]["alice"] = other
  state_path.write_text(json.dumps(state))
  (tmp_path / "dst/alice/2.jpg").unlink()
  s = mig.migrate(tmp_path / "src", tmp_path / "dst", config, **kw)
  assert s["migrated_now"] == 1 and records(tmp_path / "dst")["alice/2.jpg"]["target"] == other


def test_member_path_conflict_is_reported(tmp_path, cloaker):
  with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
    zf.writestr("a", b"file named a")
    zf.writestr("a/b.txt", b"a file under a folder also named a")
  s = mig.migrate(tmp_path / "c.zip", tmp_path / "dst", CONFIG, **JOB,
                  make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  recs = records(tmp_path / "dst")
  assert recs["a"]["status"] == "not_an_image"
  assert recs["a/b.txt"]["status"] == "write_failed" and recs["a/b.txt"]["output"] is None
  assert s["inputs"] == 2


def test_outputs_keep_their_inputs_permission_bits(tmp_path, faces_dir, cloaker):
  """A cloaked photo is as readable as its original (not mkstemp's 0600); copied files
  too; the manifest gets a new file's usual mode. Folder and tar inputs alike."""
  from jaxcloak.files import new_file_mode
  face = corpus.jpeg(corpus.face_image(faces_dir), quality=90)
  src = tmp_path / "src"
  other = corpus.jpeg(corpus.face_image(faces_dir), quality=85)
  for rel, data, mode in [("u/shared.jpg", face, 0o644), ("u/private.jpg", other, 0o600),
                          ("u/group.txt", b"notes", 0o640)]:
    corpus.write(src, rel, data).chmod(mode)
  mig.migrate(src, tmp_path / "dst", CONFIG, **JOB, make_cloaker=lambda: cloaker,
              progress=False, log=lambda m: None)
  mode = lambda p: p.stat().st_mode & 0o777
  recs = records(tmp_path / "dst")
  assert recs["u/shared.jpg"]["status"] == "cloaked" and "mode" not in recs["u/shared.jpg"]
  assert mode(tmp_path / "dst/u/shared.jpg") == 0o644
  assert mode(tmp_path / "dst/u/private.jpg") == 0o600
  assert mode(tmp_path / "dst/u/group.txt") == 0o640
  manifests = [p for p in (tmp_path / "dst" / mig.META_DIR).rglob("*") if p.is_file()]
  assert manifests and all(mode(p) == new_file_mode() for p in manifests)
  with tarfile.open(tmp_path / "in.tar", "w") as tf:
    info = tarfile.TarInfo("v/face.jpg")
    info.size, info.mode = len(face), 0o664
    tf.addfile(info, io.BytesIO(face))
  mig.migrate(tmp_path / "in.tar", tmp_path / "dst2", CONFIG, **JOB,
              make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  assert records(tmp_path / "dst2")["v/face.jpg"]["status"] == "cloaked"
  assert mode(tmp_path / "dst2/v/face.jpg") == 0o664


def test_src_by_url_migrates_like_the_same_folder(tmp_path, faces_dir, cloaker):
  """An fsspec URL SRC (here memory://, which no local path can stand for) gives the same
  outputs and statuses as the same files in a folder; an object key climbing out is refused."""
  import fsspec
  face = corpus.jpeg(corpus.face_image(faces_dir), quality=90)
  files = {"erin/face.jpg": face, "erin/notes.txt": b"not a photo", "frank/face.jpg": face[::-1]}
  fs = fsspec.filesystem("memory")
  for rel, data in files.items():
    fs.pipe(f"/src-{os.getpid()}/{rel}", data)
    corpus.write(tmp_path / "src", rel, data)
  url = f"memory://src-{os.getpid()}"
  by_url = mig.migrate(url, tmp_path / "url", CONFIG, **JOB,
                       make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  mig.migrate(tmp_path / "src", tmp_path / "dir", CONFIG, **JOB,
              make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  got, want = records(tmp_path / "url"), records(tmp_path / "dir")
  assert {k: r["status"] for k, r in got.items()} == {k: r["status"] for k, r in want.items()}
  assert got["erin/face.jpg"]["status"] == "cloaked" and by_url["inputs"] == 3
  for rel in files:
    assert (tmp_path / "url" / rel).read_bytes() == (tmp_path / "dir" / rel).read_bytes(), rel
  assert fs.cat(f"/src-{os.getpid()}/erin/face.jpg") == face  # SRC only read
  with pytest.raises(mig.MigrateError, match="no such folder"):
    mig.migrate("memory://no-such-prefix", tmp_path / "x", CONFIG, **JOB,
                make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)



def test_dst_by_url_writes_whole_objects_and_resumes(tmp_path, faces_dir, cloaker):
  """A URL DST (memory://: an object store, no renames, no appends) gets the same bytes
  as a folder DST, its manifest as one object per sync; a killed run's temp object is
  removed and a rerun finds nothing to do."""
  import fsspec
  from jaxcloak.pipeline.destination import Destination
  face = corpus.jpeg(corpus.face_image(faces_dir), quality=90)
  files = {"erin/face.jpg": face, "erin/notes.txt": b"not a photo", "frank/face.jpg": face[::-1]}
  for rel, data in files.items():
    corpus.write(tmp_path / "src", rel, data)
  fs, root = fsspec.filesystem("memory"), f"/dst-{os.getpid()}"
  fs.pipe(f"{root}/erin/.face.jpg.0123abcd.part", b"half a photo")  # left by a killed run
  run = lambda dst: mig.migrate(tmp_path / "src", dst, CONFIG, **JOB,
                                make_cloaker=lambda: cloaker, progress=False, log=lambda m: None)
  first = run(f"memory://{root}")
  run(tmp_path / "dir")
  want = records(tmp_path / "dir")
  got = Destination(f"memory://{root}").manifest().load()
  assert {k: r["status"] for k, r in got.items()} == {k: r["status"] for k, r in want.items()}
  assert got["erin/face.jpg"]["status"] == "cloaked" and first["inputs"] == 3
  for rel in files:
    assert fs.cat(f"{root}/{rel}") == (tmp_path / "dir" / rel).read_bytes(), rel
    assert got[rel]["sha256_out"] == want[rel]["sha256_out"]
  assert not [k for k in fs.find(root) if k.endswith(".part")]
  assert len(fs.ls(f"{root}/{mig.META_DIR}/manifest")) == 3  # in-process: a sync per record
  again = run(f"memory://{root}")
  assert again["nothing_to_do"] and again["already_done"] == 3
  with pytest.raises(mig.MigrateError, match="other settings"):
    mig.migrate(tmp_path / "src", f"memory://{root}", CloakConfig(mode="untargeted", steps=3),
                **JOB, make_cloaker=lambda: cloaker, progress=False,
                log=lambda m: None)
