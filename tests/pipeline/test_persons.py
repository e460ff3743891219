"""One cloak per person (scope="person"), through the real engine on real faces.

A user's folder holds two people; each gets their own cloak, saved beside the
outputs. A second batch into the same output reuses a known person's cloak with
no new search, and gives a new person a search of their own. Faces of two
people forced into one group are reported as such. A damaged or foreign saved
file, and a user with no usable face, get one `error:` line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jaxcloak
from jaxcloak import cli, persons
from jaxcloak.pipeline.destination import META_DIR

# Few steps: these tests are about who gets which cloak, not how strong it is.
FIELDS = dict(preset="mid", scope="person", steps=4)
A, B, C = "Alvaro_Uribe", "Amelie_Mauresmo", "Angelina_Jolie"


def _user_folder(root: Path, faces_dir: Path, photos: dict[str, list[str]]) -> Path:
  """root/u: one user's folder holding the given people's photos (name -> files)."""
  user = root / "u"
  user.mkdir(parents=True)
  for who, names in photos.items():
    for n in names:
      (user / f"{who}-{n}").write_bytes((faces_dir / who / n).read_bytes())
  return root


def _records(out: Path) -> dict[str, dict]:
  lines = (out / "report.jsonl").read_text().splitlines()
  return {r["input"]: r for r in map(json.loads, lines)}


def _saved(out: Path) -> list[persons.Person]:
  files = sorted((out / META_DIR / "persons").glob("*.npz"))
  assert len(files) == 1, files  # one file per user
  return persons.parse(jaxcloak.preset("mid", scope="person", mode="untargeted"), files[0].read_bytes(), "test")


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory, faces_dir):
  root = tmp_path_factory.mktemp("persons")
  out = root / "out"
  first = _user_folder(root / "first", faces_dir, {A: ["1.jpg", "2.jpg"], B: ["1.jpg", "2.jpg"]})
  jaxcloak.cloak([first], out, **FIELDS)
  after_first = _saved(out)
  records_first = _records(out)
  second = _user_folder(root / "second", faces_dir, {A: ["3.jpg"], C: ["1.jpg"]})
  jaxcloak.cloak([second], out, **FIELDS)
  return out, records_first, after_first, _records(out), _saved(out)


def _main(rec: dict) -> dict:
  return max(rec["faces"], key=lambda f: f["box"][2] * f["box"][3])


def test_each_person_of_a_user_gets_one_cloak(two_batches):
  _, first, saved, _, _ = two_batches
  key = {who: {_main(first[f"u/{who}-{n}"])["person"] for n in ("1.jpg", "2.jpg")}
         for who in (A, B)}
  assert all(len(k) == 1 for k in key.values()), key  # a person's photos share one person
  assert key[A] != key[B]  # and two people do not
  for rec in first.values():
    face = _main(rec)
    assert rec["status"] == "cloaked" and face["enrolled"] and face["search"]["steps"] >= 1
  assert {p.key for p in saved} >= key[A] | key[B]
  assert all(p.field is not None and np.abs(p.field).max() > 0 for p in saved)


def test_second_batch_reuses_a_known_persons_cloak(two_batches):
  _, first, saved_first, second, saved_second = two_batches
  a_key = _main(first[f"u/{A}-1.jpg"])["person"]
  again = _main(second[f"u/{A}-3.jpg"])
  assert second[f"u/{A}-3.jpg"]["status"] == "cloaked"
  assert again["person"] == a_key
  assert "search" not in again and "enrolled" not in again  # no new search: the saved cloak
  before = {p.key: p.field for p in saved_first}
  after = {p.key: p.field for p in saved_second}
  np.testing.assert_array_equal(after[a_key], before[a_key])


def test_another_persons_photo_does_not_get_it(two_batches):
  _, first, saved_first, second, saved_second = two_batches
  new = _main(second[f"u/{C}-1.jpg"])
  assert new["person"] not in {p.key for p in saved_first}
  assert new["enrolled"] and new["search"]["steps"] >= 1
  assert len(saved_second) == len(saved_first) + 1


def test_a_group_mixing_people_is_reported(tmp_path, faces_dir):
  # A match this loose puts two people into one group: the report must say so.
  src = _user_folder(tmp_path / "src", faces_dir, {A: ["1.jpg", "2.jpg"], B: ["1.jpg", "2.jpg"]})
  out = tmp_path / "out"
  jaxcloak.cloak([src], out, **{**FIELDS, "steps": 1}, person_match=50.0)
  recs = _records(out)
  assert len({_main(r)["person"] for r in recs.values()}) == 1
  for r in recs.values():
    assert _main(r)["person_mixed"] > persons.MIXED_PAIR_SHARE
    assert any("may be more than one person" in n for n in r["notes"])


def _cli_error(capsys, argv) -> str:
  """Exit 2 with one `error:` line, the last (per-photo messages may come before it)."""
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert [e for e in err if e.startswith("error:")] == err[-1:], err
  return err[-1]


def _photos(tmp_path, faces_dir) -> Path:
  return _user_folder(tmp_path / "src", faces_dir, {A: ["1.jpg"]})


def test_damaged_saved_cloak_is_an_error(tmp_path, faces_dir, capsys):
  out = tmp_path / "out"
  (out / META_DIR / "persons").mkdir(parents=True)
  (out / META_DIR / "persons" / "0123.npz").write_bytes(b"PK\x03\x04 not a real archive")
  line = _cli_error(capsys, ["cloak", str(_photos(tmp_path, faces_dir)), "-o", str(out),
                             "--scope", "person", "--mode", "untargeted"])
  assert "damaged" in line and "delete the file" in line
  assert not (out / "u").exists()  # refused before anything was written


def test_saved_cloak_of_another_version_is_an_error(tmp_path, faces_dir, capsys):
  out = tmp_path / "out"
  (out / META_DIR / "persons").mkdir(parents=True)
  buf = io.BytesIO()
  meta = {"format": persons.FORMAT, "version": persons.FORMAT_VERSION + 1, "people": []}
  np.savez(buf, meta=np.array(json.dumps(meta)))
  (out / META_DIR / "persons" / "0123.npz").write_bytes(buf.getvalue())
  line = _cli_error(capsys, ["cloak", str(_photos(tmp_path, faces_dir)), "-o", str(out),
                             "--scope", "person", "--mode", "untargeted"])
  assert "another version" in line


def test_user_with_no_usable_face_is_an_error(tmp_path, capsys):
  src = tmp_path / "src" / "u"
  src.mkdir(parents=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (200, 200, 3), np.uint8)).save(src / "noise.png")
  line = _cli_error(capsys, ["cloak", str(tmp_path / "src"), "-o", str(tmp_path / "out"),
                             "--scope", "person", "--mode", "untargeted", "--steps", "1"])
  assert "no usable face" in line and "'u'" in line
  assert (tmp_path / "out" / "u" / "noise.png").read_bytes() == (src / "noise.png").read_bytes()


def test_migrate_groups_people_and_reuses_their_cloaks_on_a_rerun(tmp_path, faces_dir):
  from jaxcloak.pipeline.manifest import Manifest
  src = _user_folder(tmp_path / "src", faces_dir, {A: ["1.jpg", "2.jpg"], B: ["1.jpg"]})
  dst = tmp_path / "dst"
  jaxcloak.migrate(src, dst, **FIELDS)
  first = Manifest(dst / META_DIR / "manifest.jsonl").load()
  people = {rel: rec["persons"][0] for rel, rec in first.items()}
  assert people[f"u/{A}-1.jpg"] == people[f"u/{A}-2.jpg"] != people[f"u/{B}-1.jpg"]
  assert all(rec["status"] == "cloaked" for rec in first.values())
  # A new photo of a known person, migrated by a rerun of the same job, joins them: the
  # second person seen (a fresh grouping would call them the first).
  assert people[f"u/{B}-1.jpg"] != "p0"
  (src / "u" / f"{B}-2.jpg").write_bytes((faces_dir / B / "2.jpg").read_bytes())
  jaxcloak.migrate(src, dst, **FIELDS)
  again = Manifest(dst / META_DIR / "manifest.jsonl").load()[f"u/{B}-2.jpg"]
  assert again["status"] == "cloaked" and again["persons"] == [people[f"u/{B}-1.jpg"]]
  assert len(list((dst / META_DIR / "persons").glob("*.npz"))) == 1
