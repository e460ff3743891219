"""Eval on real photos: the insightface adapter, a clean identity classifier, and `eval --quick`."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from jaxcloak.eval import metrics, trackers

from tests.conftest import ensure_weights


def _tiny_arcface_onnx(path, size=112, dim=8, seed=0):
  """A small recognition-shaped ONNX model (NCHW 112x112 in, [b, dim] out) built here."""
  rng = np.random.default_rng(seed)
  w = numpy_helper.from_array(rng.normal(0, 0.1, (dim, 3, 8, 8)).astype(np.float32), "w")
  nodes = [helper.make_node("Conv", ["input.1", "w"], ["c"], name="conv0", strides=[8, 8]),
           helper.make_node("Relu", ["c"], ["r"], name="relu0"),
           helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap0"),
           helper.make_node("Flatten", ["g"], ["embedding"], name="flat0")]
  graph = helper.make_graph(
      nodes, "tiny_arcface",
      [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])],
      [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", dim])], [w])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  onnx.save(model, str(path))


def test_insightface_extractor_path_loads_through_insightface(tmp_path):
  import onnxruntime
  from insightface.utils import face_align
  path = tmp_path / "tiny_arcface.onnx"
  _tiny_arcface_onnx(path)
  emb = trackers.make_embedder(f"insightface:{path}")
  assert type(emb.model).__name__ == "ArcFaceONNX" and emb.name == f"insightface:{path}"
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (140, 120, 3), dtype=np.uint8) for _ in range(3)]
  lm = np.array([[45, 60], [75, 60], [60, 78], [48, 96], [72, 96]], np.float32)
  f = emb(images, [lm] * 3)
  assert f.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
  # Same numbers as running the ONNX file directly on insightface's aligned crop (BGR, (x-127.5)/127.5).
  crop = face_align.norm_crop(np.ascontiguousarray(images[0][..., ::-1]), lm, image_size=112)
  blob = ((crop[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
  sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  ref = sess.run(None, {"input.1": blob})[0][0]
  np.testing.assert_allclose(f[0], ref / np.linalg.norm(ref), rtol=1e-4, atol=1e-5)


def test_insightface_missing_pack_fails_loudly(tmp_path):
  with pytest.raises((ValueError, AssertionError)):
    trackers.make_embedder("insightface:buffalo_missing", insightface_root=str(tmp_path))


def test_identity_classifier_on_clean_photos_is_accurate(faces_dir):
  from jaxcloak.eval import dataset
  from jaxcloak.faces.detect import Detector
  ensure_weights("dlib")
  ensure_weights("yunet")
  ids = dataset.subsample(dataset.scan(faces_dir), max_identities=5, max_photos=6, min_photos=6,
                          seed=0)
  samples, _ = dataset.load_samples(Detector(), ids, prefix="t", log=lambda m: None)
  splits = dataset.split_identities(samples, (), train_per_user=0, train_fraction=0.5)
  names = sorted(splits)
  label = {n: i for i, n in enumerate(names)}
  emb = trackers.make_embedder("dlib")
  tr = [(s, label[n]) for n in names for s in splits[n].train]
  te = [(s, label[n]) for n in names for s in splits[n].test]
  xtr = emb([s.rgb for s, _ in tr], [s.landmarks for s, _ in tr])
  xte = emb([s.rgb for s, _ in te], [s.landmarks for s, _ in te])
  for kind in ("probe", "knn"):
    clf = trackers.make_classifier(kind).fit(xtr, np.array([y for _, y in tr]), len(names))
    acc = metrics.accuracy(clf.predict(xte), np.array([y for _, y in te]))
    assert acc.value >= 0.8, (kind, acc)


@pytest.mark.slow
def test_eval_quick_cli(faces_dir, pool_dir, tmp_path):
  """`jaxcloak eval --quick`, shrunk further so CI runs it in a few minutes.

  Most of its time is the three cloak compiles: dlib (every experiment's base
  cloak), then sface and dlib+sface for the transfer experiment. Regions are capped
  at 160 px (larger ones are optimised downscaled), so every face shares one bucket
  and each cloak compiles once, not once per bucket.
  """
  from jaxcloak.eval.cli import main
  for name in ("dlib", "sface", "yunet"):
    ensure_weights(name)
  out = tmp_path / "report"
  rc = main(["eval", str(faces_dir), "--pool", str(pool_dir), "-o", str(out), "--quick",
             "--identities", "6", "--max-photos", "6", "--train-per-user", "3",
             "--pool-identities", "6", "--pool-photos", "2", "--background", "2", "--steps", "3",
             "--budgets", "0.004", "--transforms", "jpeg:50,augment", "--adaptive-photos", "0",
             "--experiments",
             "matrix,transfer,frontier,knobs,budget,leakage,transforms,robust,adaptive",
             "--knob", "budget=0.007", "--cloak", "max_region=160", "--quiet"])
  assert rc == 0
  md = (out / "report.md").read_text()
  for section in ("PSR matrix", "PSR vs DSSIM budget", "leaked clean photos", "after transforms",
                  "Robust tracker", "Adaptive tracker", "Cloak quality", "Transfer: leave one",
                  "Knobs: each technique", "Frontier: protection against visibility"):
    assert section in md
  recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
  info, rows = recs[0], [r for r in recs[1:] if "psr_n" in r]
  assert info["experiment"] == "info" and len(info["users"]) == 2
  assert rows and all(r["psr_n"] >= 1 and 0 <= r["psr"] <= 1 for r in rows)
  # Counts behind every rate: PSR = not-recognised count / user's test photos.
  assert all(abs(r["psr"] - r["psr_k"] / r["psr_n"]) < 1e-9 for r in rows)
  quality = [r for r in recs if r.get("experiment") == "quality"]
  assert quality and all(q["dssim_max"] is None or q["dssim_max"] <= q["budget"] + 1e-6
                         for q in quality)
  assert (out / "psr_vs_leakage.png").exists()
  # Transfer (quick: dlib and sface left out in turn), through all three tracker pipelines.
  tr = [r for r in rows if r["experiment"] == "transfer"]
  assert {(r["held_out"], r["tracker"]) for r in tr} == {
      (m, t) for m in ("dlib", "sface") for t in (m, f"{m}@retinaface", f"{m}@margin")}
  assert {r["role"] for r in tr} == {"transfer", "white-box", "clean"}
  assert all(r["cloak_models"] == ("sface" if r["held_out"] == "dlib" else "dlib")
             for r in tr if r["role"] == "transfer")
  assert all(r["cloak_models"] == "dlib+sface" for r in tr if r["role"] == "white-box")
  cloaked = [r for r in tr if r["role"] != "clean"]
  assert all(r["heldout_shift"] > 0 and 0 <= r["heldout_fooled"] <= 1 for r in cloaked)
  assert all(set(r["member_fooled"]) == {"dlib", "sface"} for r in cloaked)
  # The loop's own per-member figures reach the rows and the report (issue 24).
  assert all(set(r["loop_member_distances"]) == set(r["cloak_models"].split("+"))
             for r in cloaked)
  assert "The loop's own per-member distances" in md
  assert info["transfer_models"] == ["dlib", "sface"]
  assert set(info["tracker_pipelines"]) == {"retinaface", "margin"}
  assert "| dlib | retinaface | sface |" in md and (out / "psr_transfer.png").exists()
  # Knobs: the base cloak and the one --knob row, judged by the quick trackers (dlib, a member).
  kn = [r for r in rows if r["experiment"] == "knobs"]
  assert {r["knob"] for r in kn} == {"no cloak", "base", "budget=0.007"}
  assert all(not r["held_out"] for r in kn if r["knob"] != "no cloak")
  kq = {q["knob"]: q for q in quality if q["for"] == "knobs"}
  assert kq["budget=0.007"]["budget"] == 0.007 and kq["base"]["budget"] == 0.004
  assert all(40 < q["ssimulacra2_min"] <= 100 and 0 < q["worst_block_max"] < 0.2
             for q in kq.values())
  # Frontier (quick: the low cloak at two strengths, sface held out, dlib white-box).
  fr = [r for r in rows if r["experiment"] == "frontier"]
  points = ("budget=0.004 local_budget=0.01", "budget=0.012 local_budget=0.03")
  assert {(r["point"], r["role"], r["tracker"]) for r in fr if r["family"] == "base"} == {
      (p, role, t) for p in points for role, t in (("held-out", "sface"), ("white-box", "dlib"))}
  assert {r["tracker"] for r in fr if r["family"] == "no cloak"} == {"sface"}
  cloaked = [r for r in fr if r["family"] == "base"]
  assert all(np.isfinite(r["gap_closed"]) and -1 < r["gap_closed"] < 3 for r in cloaked)
  from jaxcloak.eval import report_rows
  points_rows = [r for r in report_rows.frontier_points(recs) if r["family"] == "base"]
  assert [r["point"] for r in points_rows] == list(points)
  for r in points_rows:
    c = r["held-out probe"]
    assert c["users"] == 2 and c["lo"] <= c["mean"] <= c["hi"]
    q = r["quality"]
    assert q["dssim_max"] <= q["budget"] + 1e-6 and 40 < q["ssimulacra2_median"] <= 100
  weak, strong = (r["quality"] for r in points_rows)
  assert strong["dssim_mean"] > weak["dssim_mean"]  # the strength axis is real
  assert (out / "frontier.png").exists()
