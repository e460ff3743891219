"""`jaxcloak check`: pairing, per-model verdicts with real models on real photos, errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxcloak import SAMPLES_DIR, protection
from jaxcloak.cli import main

from tests.conftest import ensure_weights


def _image(path, value=128):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def test_pairs_by_path_then_by_name_without_suffix(tmp_path):
  for rel in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
    _image(tmp_path / "o" / rel)
  _image(tmp_path / "c/a/1.jpg")
  _image(tmp_path / "c/b/3.png")  # written in another format
  _image(tmp_path / "c/extra.jpg")
  _image(tmp_path / "c/.jaxcloak/sheet.png")  # tool folders are not photos
  pairs = {p.rel: (p.original is not None, p.cloaked is not None)
           for p in protection.pair_photos(tmp_path / "o", tmp_path / "c")}
  assert pairs == {"a/1.jpg": (True, True), "a/2.jpg": (True, False), "b/3.jpg": (True, True),
                   "extra.jpg": (False, True)}


def test_folders_without_a_common_photo_are_an_error(tmp_path):
  _image(tmp_path / "o/x.jpg")
  _image(tmp_path / "c/y.jpg")
  with pytest.raises(protection.CheckError, match="no photo of CLOAKED"):
    protection.pair_photos(tmp_path / "o", tmp_path / "c")
  with pytest.raises(protection.CheckError, match="is not a folder"):
    protection.pair_photos(tmp_path / "nope", tmp_path / "c")


def test_summary_separates_models_the_cloak_was_made_on():
  face = lambda a, b: {"photo": "p", "status": "checked", "dssim": 0.01, "models": {
      "dlib": {"fooled": a}, "sface": {"fooled": b}}}
  s = protection.summarize([face(True, False), face(True, True), {"photo": "q", "status": "no_face"}],
                      ("dlib", "sface"), ("dlib",))
  assert s["models"]["dlib"] == {"faces": 2, "fooled": 2, "fooled_share": 1.0, "optimised_on": True}
  assert s["models"]["sface"]["fooled_share"] == 0.5 and not s["models"]["sface"]["optimised_on"]
  assert s["faces_fooling_every_other_model"] == 1 and s["statuses"] == {"checked": 2, "no_face": 1}
  assert "| sface | no | 1/2 | 0.50 |" in protection.table(s)


def test_check_real_photos_with_real_models(tmp_path):
  """Sample photos against an exact copy and a PNG re-encode paired by name (no model
  fooled, DSSIM ~0), and a photo missing on the cloaked side."""
  for name in ("dlib", "mobileface", "yunet"):
    ensure_weights(name)
  orig, cloaked = tmp_path / "orig", tmp_path / "cloaked"
  orig.mkdir()
  cloaked.mkdir()
  for n in ("astronaut.jpg", "obama.jpg", "biden.jpg"):
    shutil.copy(SAMPLES_DIR / n, orig / n)
  shutil.copy(SAMPLES_DIR / "astronaut.jpg", cloaked / "astronaut.jpg")
  Image.open(SAMPLES_DIR / "obama.jpg").save(cloaked / "obama.png")
  (cloaked / "report.jsonl").write_text(json.dumps(
      {"faces": [{"features": {"dlib": {}}}]}) + "\n")
  rc = main(["check", str(orig), str(cloaked), "--extractors", "dlib,mobileface", "--quiet"])
  assert rc == 0
  recs = [json.loads(l) for l in (cloaked / "check" / "check.jsonl").read_text().splitlines()]
  by = {}
  for r in recs:
    by.setdefault(r["photo"], []).append(r)
  assert [r["status"] for r in by["biden.jpg"]] == ["missing_cloaked"]
  for name in ("astronaut.jpg", "obama.jpg"):
    face = next(r for r in by[name] if r["status"] == "checked")
    assert face["dssim"] < 0.001
    assert set(face["models"]) == {"dlib", "mobileface"}
    assert not any(v["fooled"] for v in face["models"].values())
    assert face["models"]["dlib"]["optimised_on"] and not face["models"]["mobileface"]["optimised_on"]
  assert (cloaked / "check" / "sheet-001.png").exists()
  assert "| mobileface | no | 0/" in (cloaked / "check" / "check.md").read_text()
  import jaxcloak  # the same through the top-level API
  api = jaxcloak.check(orig, cloaked, tmp_path / "api", extractors=("dlib",))
  assert api["models"]["dlib"] == {"faces": 2, "fooled": 0, "fooled_share": 0.0,
                                   "optimised_on": True}


@pytest.mark.parametrize("args, says", [
    (["{tmp}/nope", "{tmp}/c"], "ORIGINALS"),
    (["{tmp}/o", "{tmp}/c", "--extractors", "dlib,arcface"], "unknown extractors: arcface"),
    (["{tmp}/o", "{tmp}/x"], "no photo of CLOAKED"),
])
def test_check_mistakes_are_one_error_line(tmp_path, capsys, args, says):
  _image(tmp_path / "o/a.jpg")
  _image(tmp_path / "c/a.jpg")
  _image(tmp_path / "x/b.jpg")
  rc = main(["check", *[a.format(tmp=tmp_path) for a in args], "--quiet"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0]


@pytest.mark.slow
def test_cloak_with_check_judges_its_outputs_and_keeps_permissions(tmp_path, capsys):
  """`cloak --check` on real photos: every output judged by every ported model, the
  cloak's own model marked; outputs as readable as their inputs (not 0600)."""
  for name in ("dlib", "facenet", "sface", "faceres", "mobileface", "yunet"):
    ensure_weights(name)
  src = tmp_path / "in"
  src.mkdir()
  for n, mode in (("astronaut.jpg", 0o644), ("obama.jpg", 0o640)):
    shutil.copy(SAMPLES_DIR / n, src / n)
    (src / n).chmod(mode)
  out = tmp_path / "out"
  rc = main(["cloak", str(src), "-o", str(out), "--preset", "low", "--steps", "2",
             "--mode", "untargeted", "--check", "--quiet"])
  assert rc == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  models = summary["check"]["models"]
  assert set(models) == {"dlib", "facenet", "sface", "faceres", "mobileface"}
  assert models["dlib"]["optimised_on"] and not models["sface"]["optimised_on"]
  assert all(m["faces"] == 2 for m in models.values())
  assert (out / "check" / "sheet-001.png").exists()
  assert (out / "astronaut.jpg").stat().st_mode & 0o777 == 0o644
  assert (out / "obama.jpg").stat().st_mode & 0o777 == 0o640


def test_top_level_api_is_light_and_complete():
  import subprocess
  import sys
  code = ("import sys, jaxcloak; print('jax' in sys.modules, callable(jaxcloak.cloak), "
          "callable(jaxcloak.check), callable(jaxcloak.migrate), jaxcloak.preset('low').budget, "
          "sorted(jaxcloak.PRESETS))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout.split(maxsplit=5)
  assert out[:5] == ["False", "True", "True", "True", "0.004"]
  from jaxcloak.pipeline.cloaker import Cloaker  # deep paths keep working  # noqa: F401
