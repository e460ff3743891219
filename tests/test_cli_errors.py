"""`jaxcloak cloak`: mistakes a person can make end in one `error:` line and exit code 2."""

import os

import pytest

from jaxcloak.cli import main


@pytest.mark.parametrize("flags, says", [
    (["--extractors", "dlib,nosuchmodel"], "unknown extractor 'nosuchmodel'"),
    (["--extractors", "faceres", "--weights-dir", "{tmp}/empty"], "jaxcloak weights fetch faceres"),
    (["--budget", "2"], "DSSIM budget must be in (0, 1)"),
    (["--views", "-1"], "views must be >= 0"),
    (["--view-kinds", "flip,warp"], "unknown view kinds ['warp']"),
    (["--local-budget", "0"], "local_budget must be in (0, 1)"),
    (["--mode", "targeted", "--pool", "{tmp}/nopool"], "no such folder"),
])
def test_cloak_errors(tmp_path, capsys, flags, says):
  flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
  (tmp_path / "empty").mkdir()
  code = main(["cloak", "--samples", "-o", str(tmp_path / "out"), "--quiet", *flags])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].startswith("error: ") and says in err[-1], err


def test_missing_input_path(tmp_path, capsys):
  code = main(["cloak", str(tmp_path / "nothere"), "-o", str(tmp_path / "out")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err[-1].startswith("error: ") and "nothere" in err[-1]


def test_output_that_is_a_file(tmp_path, capsys):
  (tmp_path / "afile").write_text("x")
  assert main(["cloak", "--samples", "-o", str(tmp_path / "afile"), "--quiet"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
  (tmp_path / "src").mkdir()
  assert main(["migrate", str(tmp_path / "src"), str(tmp_path / "afile"), "--quiet",
               "--mode", "untargeted"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "is a file" in err[-1]
  import fsspec  # the same for a DST URL naming an object
  fsspec.filesystem("memory").pipe(f"/taken-{os.getpid()}", b"x")
  assert main(["migrate", str(tmp_path / "src"), f"memory://taken-{os.getpid()}", "--quiet",
               "--mode", "untargeted"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "is a file" in err[-1]


def test_empty_pool_folder(tmp_path, capsys):
  (tmp_path / "pool").mkdir()
  assert main(["cloak", "--samples", "-o", str(tmp_path / "out"), "--quiet",
               "--pool", str(tmp_path / "pool")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "no identity subfolders" in err[-1]


@pytest.fixture()
def tiny_disk(tmp_path):
  """A real 160 KB filesystem (tmpfs), where mounting is allowed (root, as in CI)."""
  import subprocess
  disk = tmp_path / "disk"
  disk.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)],
                     capture_output=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.must_run  # the only test of a real full disk
def test_full_disk_during_migrate_is_one_error_line(tmp_path, tiny_disk, faces_dir, capsys):
  src = tmp_path / "src"
  for d in sorted(p for p in faces_dir.iterdir() if p.is_dir())[:2]:
    for f in sorted(d.glob("*.jpg"))[:8]:  # ~16 x 15 KB: more than the disk holds
      (src / d.name).mkdir(parents=True, exist_ok=True)
      (src / d.name / f.name).write_bytes(f.read_bytes())
  before = {p: p.read_bytes() for p in src.rglob("*.jpg")}
  code = main(["migrate", str(src), str(tiny_disk / "dst"), "--quiet", "--mode", "untargeted",
               "--extractors", "dlib", "--views", "0", "--steps", "1", "--max-region", "64",
               "--batch-size", "4", "--chunk", "4"])  # test_one_sequence's programs: cache hits
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].startswith("error: ") and "No space left" in err[-1] and "rerun" in err[-1]
  assert {p: p.read_bytes() for p in src.rglob("*.jpg")} == before  # originals untouched


ENGINE_BAD = [(["--batch-size", "0"], "batch_size must be >= 1"),
              (["--batch-size", "-3"], "batch_size must be >= 1"),
              (["--max-region", "0"], "max_region must be >= 32"),
              (["--learning-rate", "0"], "learning_rate must be > 0"),
              (["--max-pixels", "0"], "max_pixels must be >= 1"),
              (["--detect-side", "0"], "detect_side must be >= 32"),
              (["--detect-side", "-640"], "detect_side must be >= 32")]
WALK_BAD = [(["--chunk", "0"], "chunk must be >= 1"),
            (["--chunk-mb", "0"], "chunk_bytes must be >= 1"),
            (["--max-file-mb", "-1"], "max_file_bytes must be >= 1"),
            (["--max-faces", "0"], "max_faces must be >= 1")]


@pytest.mark.parametrize("command, flags, says", [("cloak", f, s) for f, s in ENGINE_BAD]
                         + [("migrate", f, s) for f, s in ENGINE_BAD + WALK_BAD])
def test_bad_engine_values_are_one_error_line(tmp_path, capsys, command, flags, says):
  """A setting the engine cannot run with stops the command before it reads or writes."""
  (tmp_path / "src").mkdir()
  where = (["--samples", "-o", str(tmp_path / "out")] if command == "cloak"
           else [str(tmp_path / "src"), str(tmp_path / "out")])
  assert main([command, *where, *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
  assert not (tmp_path / "out").exists()


def test_batch_size_zero_is_not_a_traceback(tmp_path):
  """The reported command, as typed: it used to end in ZeroDivisionError."""
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-m", "jaxcloak", "cloak", "--samples", "--batch-size", "0",
                      "-o", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "error: batch_size must be >= 1, got 0"], r.stderr
