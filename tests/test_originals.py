"""An original is never touched: no entry point writes into, onto or around what it reads.

Every case is refused before a model loads, with one `error:` line and exit 2
from the CLI, or a ValueError from the API, and every original keeps its bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import jaxcloak
from jaxcloak import cli
from jaxcloak.paths import OverlapError, output_file, refuse_overlap
from jaxcloak.pipeline.destination import Destination


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
  """rel -> (sha256, mtime_ns) of every file under root (symlinks not followed)."""
  return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.lstat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def one_error_line(capsys) -> str:
  """What a person sees for a mistake: exactly one line, `error: ...`."""
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), err
  return err[0]


@pytest.fixture
def photos(tmp_path, faces_dir) -> Path:
  """The README's layout: one subfolder per person, real faces."""
  root = tmp_path / "photos"
  for who in sorted(d for d in faces_dir.iterdir() if d.is_dir())[:2]:
    (root / who.name).mkdir(parents=True)
    for src in sorted(who.iterdir())[:2]:
      (root / who.name / src.name).write_bytes(src.read_bytes())
  return root


def _person(photos: Path) -> Path:
  return sorted(d for d in photos.iterdir() if d.is_dir())[0]


def _outputs(photos: Path, tmp_path: Path) -> dict[str, Path]:
  link = tmp_path / "link-to-person"
  link.symlink_to(_person(photos), target_is_directory=True)
  around = tmp_path / "link-to-parent"
  around.symlink_to(photos.parent, target_is_directory=True)
  return {"src": photos, "person": _person(photos), "inside": photos / "out",
          "symlink into src": link, "holds src through a symlink": around,
          "holds src": photos.parent}


@pytest.mark.parametrize("case", ["src", "person", "inside", "symlink into src",
                                  "holds src", "holds src through a symlink"])
def test_cloak_refuses_an_output_over_the_originals(photos, tmp_path, capsys, case):
  before = snapshot(photos)
  out = _outputs(photos, tmp_path)[case]
  assert cli.main(["cloak", str(photos), "-o", str(out), "--quiet"]) == 2
  assert "originals are never modified" in one_error_line(capsys)
  assert snapshot(photos) == before


def test_cloak_refuses_the_folder_of_an_input_file(photos, capsys):
  one = sorted(_person(photos).iterdir())[0]
  before = snapshot(photos)
  assert cli.main(["cloak", str(one), "-o", str(one.parent), "--quiet"]) == 2
  one_error_line(capsys)
  assert snapshot(photos) == before


@pytest.mark.parametrize("case", ["src", "person", "inside", "symlink into src", "holds src"])
def test_api_cloak_raises_value_error(photos, tmp_path, case):
  before = snapshot(photos)
  with pytest.raises(ValueError, match="originals are never modified"):
    jaxcloak.cloak([photos], _outputs(photos, tmp_path)[case])
  with pytest.raises(ValueError):
    jaxcloak.cloak([str(photos)], str(photos))  # strings, as the README writes it
  assert snapshot(photos) == before


@pytest.mark.parametrize("case", ["src", "person", "inside", "symlink into src", "holds src"])
def test_migrate_refuses_the_same(photos, tmp_path, capsys, case):
  before = snapshot(photos)
  out = _outputs(photos, tmp_path)[case]
  assert cli.main(["migrate", str(photos), str(out), "--quiet"]) == 2
  one_error_line(capsys)
  with pytest.raises(ValueError):
    jaxcloak.migrate(photos, out)
  with pytest.raises(ValueError):
    jaxcloak.migrate(f"file://{photos}", f"file://{out}")  # URLs pass through as typed
  assert snapshot(photos) == before


def test_check_refuses_a_report_folder_in_the_originals(photos, tmp_path, capsys):
  before = snapshot(photos)
  cloaked = tmp_path / "cloaked"
  cloaked.mkdir()
  for out in (photos, _person(photos), photos / "check"):
    assert cli.main(["check", str(photos), str(cloaked), "-o", str(out), "--quiet"]) == 2
    one_error_line(capsys)
    with pytest.raises(ValueError):
      jaxcloak.check(photos, cloaked, out)
  assert snapshot(photos) == before


def test_refuse_overlap_lets_clear_folders_pass(photos, tmp_path):
  refuse_overlap(tmp_path / "out", [photos])  # a sibling
  refuse_overlap(tmp_path / "out", [sorted(_person(photos).iterdir())[0]])  # a file elsewhere
  with pytest.raises(OverlapError):
    refuse_overlap(tmp_path, [photos])


def test_a_symlink_made_inside_the_output_is_not_written_through(photos, tmp_path):
  """A folder or file in the output that leads back to an original is refused as it is
  written, by the local writer and by migrate's Destination alike."""
  person = _person(photos)
  name = sorted(person.iterdir())[0].name
  out = tmp_path / "out"
  out.mkdir()
  (out / person.name).symlink_to(person, target_is_directory=True)
  before = snapshot(photos)
  with pytest.raises(OverlapError, match="leads outside"):
    output_file(out, f"{person.name}/{name}")
  with pytest.raises(OverlapError, match="leads outside"):
    Destination(out).write(f"{person.name}/{name}", b"not a photo")
  assert snapshot(photos) == before
  # An input reached through a symlinked file: its output name is the original itself.
  elsewhere = tmp_path / "elsewhere"
  (elsewhere / person.name).mkdir(parents=True)
  target = elsewhere / person.name / name
  target.write_bytes(b"original")
  link = photos / "via-link.jpg"
  link.symlink_to(target)
  with pytest.raises(OverlapError, match="is input"):
    output_file(elsewhere, f"{person.name}/{name}", source=link)
  assert target.read_bytes() == b"original"
