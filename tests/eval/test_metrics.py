"""Eval metrics, classifiers and report on constructed cases with known answers (no real models)."""

import json

import numpy as np
import pytest

from jaxcloak.eval import metrics, report, trackers
from jaxcloak.eval import transforms as T


def _clusters(n_classes=5, per=12, d=16, spread=0.15, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n_classes, d))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = np.concatenate([c + spread * rng.normal(size=(per, d)) for c in centres])
  y = np.repeat(np.arange(n_classes), per)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_psr_of_a_tracker_that_always_says_the_user_is_zero():
  r = metrics.psr(np.full(7, 3), user_label=3)
  assert (r.value, r.k, r.n) == (0.0, 0, 7)


def test_psr_counts_photos_not_classified_as_the_user():
  r = metrics.psr(np.array([3, 1, 2, 3]), user_label=3)
  assert (r.value, r.k, r.n) == (0.5, 2, 4)
  assert str(r) == "0.50 (2/4)"
  assert metrics.psr(np.array([0, 1]), user_label=3).value == 1.0


def test_accuracy_and_summary():
  a = metrics.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
  assert (a.k, a.n) == (3, 4)
  s = metrics.summarize([0.0, 1.0, float("nan")])
  assert s["n"] == 2 and s["mean"] == 0.5 and s["std"] == pytest.approx(np.sqrt(0.5))


@pytest.mark.parametrize("kind", ["probe", "knn", "robust"])
def test_identity_classifier_on_clean_clusters_is_accurate(kind):
  x, y = _clusters()
  xt, yt = _clusters(seed=0)[0][1::2], y[1::2]
  clf = trackers.make_classifier(kind, probe_steps=200).fit(x[::2], y[::2], 5)
  assert metrics.accuracy(clf.predict(xt), yt).value >= 0.95


def test_probe_uses_only_real_classes_and_pads_rows():
  x, y = _clusters(n_classes=3, per=4)
  clf = trackers.LinearProbe(steps=100).fit(x, y, 3)
  pred = clf.predict(x)
  assert pred.shape == (12,) and set(pred) <= {0, 1, 2}
  assert clf.predict(x[:0]).shape == (0,)


def test_cloaked_training_photos_flip_the_tracker():
  # U's training features sit on another class's cluster (a perfect cloak):
  # a nearest-neighbour tracker then never recognises U's clean test photos.
  x, y = _clusters()
  u_clean = x[y == 0]
  x_train = np.concatenate([x[y != 0], x[y == 1][:6] + 0.01])
  y_train = np.concatenate([y[y != 0], np.zeros(6, int)])
  clf = trackers.make_classifier("knn").fit(x_train, y_train, 5)
  assert metrics.psr(clf.predict(u_clean), 0).value == 1.0


def test_detection_without_originals_flags_a_class_on_top_of_its_target():
  x, y = _clusters(n_classes=8, spread=0.1)
  others = [x[y == k] for k in range(2, 8)]
  target = x[y == 1]
  hit = metrics.target_proximity(target + 0.01, target, others)
  assert hit["sigma"] > 3 and hit["normal_pairs"] == 15
  miss = metrics.target_proximity(x[y == 0], target, others)
  assert abs(miss["sigma"]) < 3


def test_detection_with_originals_flags_a_split_class():
  x, y = _clusters(n_classes=8, spread=0.1)
  others = [x[y == k] for k in range(1, 8)]
  cloaked = x[y == 1][:6]
  mixed = np.concatenate([cloaked, x[y == 0][:6]])
  r = metrics.cluster_split(mixed, others, cloaked_mask=np.r_[np.ones(6), np.zeros(6)])
  assert r["sigma"] > 3 and r["purity"] == 1.0
  normal = metrics.cluster_split(x[y == 0], others)
  assert normal["sigma"] < 3


def test_two_means_is_deterministic():
  x, _ = _clusters(n_classes=2, per=5)
  a, ca = metrics.two_means(x)
  b, cb = metrics.two_means(x)
  assert np.array_equal(a, b) and np.allclose(ca, cb)
  assert len(set(a[:5])) == 1 and len(set(a[5:])) == 1 and a[0] != a[5]


def test_psnr():
  a = np.zeros((4, 4, 3), np.uint8)
  assert metrics.psnr(a, a) == float("inf")
  assert metrics.psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0))


def test_transforms_are_deterministic_and_move_landmarks():
  rng = np.random.default_rng(0)
  im = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
  lm = np.array([[30, 30], [50, 30], [40, 40], [32, 50], [48, 50]], np.float32)
  for spec in ("blur:1", "noise:0.05", "jpeg:50"):
    a, la = T.apply(T.parse(spec), im, lm, seed=1)
    b, _ = T.apply(T.parse(spec), im, lm, seed=1)
    assert a.shape == im.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.array_equal(la, lm) and not np.array_equal(a, im)
  aug = T.parse("augment")
  assert aug.train_only
  out, lm2 = T.apply(aug, im, lm, seed=3)
  assert out.shape == im.shape and not np.allclose(lm2, lm)
  with pytest.raises(ValueError):
    T.parse("sharpen:2")


def test_finetuned_tracker_on_a_tiny_model():
  from tests.core.tiny import tiny_extractor
  ext = tiny_extractor()
  emb = trackers.PortedEmbedder("tiny", extractor=ext, batch_size=8)
  rng = np.random.default_rng(0)
  base = rng.random((3, 1, 32, 32, 3)).astype(np.float32)
  crops = np.clip(base + 0.03 * rng.normal(size=(3, 8, 32, 32, 3)), 0, 1).astype(np.float32)
  x, y = crops.reshape(-1, 32, 32, 3), np.repeat(np.arange(3), 8)
  ft = trackers.FineTuned(emb, epochs=2, batch_size=8, layers=("Dense_0",)).fit(x, y, 3)
  assert metrics.accuracy(ft.predict(x), y).value >= 0.9
  with pytest.raises(ValueError):
    trackers.FineTuned(emb, layers=("nope",))


def test_report_writes_tables_jsonl_and_plots(tmp_path):
  recs = []
  for exp, setting, extra in (("matrix", "no cloak", {}), ("budget", "budget 0.01", {"budget": 0.01}),
                              ("leakage", "leak 0.2", {"leak": 0.2}),
                              ("transforms", "blur(1)", {"transform": "blur(1)"})):
    for u in ("A", "B"):
      recs.append({"experiment": exp, "config": "dlib/b0.01", "setting": setting, "user": u,
                   "tracker": "dlib", "kind": "probe", "psr": 0.5, "psr_k": 1, "psr_n": 2,
                   "acc": 1.0, "acc_k": 4, "acc_n": 4, **extra})
  recs.append({"experiment": "detection", "config": "c", "setting": "none", "user": "A",
               "tracker": "dlib", "target": "T", "cloaked_photos": 3, "clean_photos": 2,
               "without_originals": {"sigma": 3.5}, "with_originals": {"sigma": 0.2, "purity": 0.8}})
  recs.append({"experiment": "quality", "for": "matrix", "config": "dlib/b0.01", "budget": 0.01,
               "steps": 5, "photos": 6, "cloaked": 6, "statuses": {"cloaked": 6}, "redetected": 6,
               "dssim_mean": 0.008, "dssim_max": 0.01, "psnr_mean": 40.0,
               "feature_shift_mean": 0.3, "seconds_per_photo": 1.0, "targets": ["T"]})
  report.write(tmp_path, recs, {"users": ["A", "B"], "seconds": 1.0}, {"seed": 0})
  md = (tmp_path / "report.md").read_text()
  assert "0.50 +- 0.00 [2/4]" in md  # the rate with the pooled counts behind it
  assert "| none | c | dlib | n/a +- n/a | 0/1 |" not in md and "3.50" in md
  lines = (tmp_path / "results.jsonl").read_text().splitlines()
  assert json.loads(lines[0])["experiment"] == "info" and len(lines) == len(recs) + 1
  for png in ("psr_vs_dssim", "psr_matrix_probe", "psr_vs_leakage", "psr_vs_transforms",
              "detection_separations"):
    assert (tmp_path / f"{png}.png").stat().st_size > 1000
  # Rewritten after each experiment: only the plot whose rows changed is drawn again.
  drawn = {}
  report.write(tmp_path, recs, {"users": ["A", "B"]}, {"seed": 0}, drawn=drawn)
  mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
  recs = [{**r, "psr": 1.0} if r["experiment"] == "leakage" else r for r in recs]
  report.write(tmp_path, recs, {"users": ["A", "B"]}, {"seed": 0}, drawn=drawn)
  again = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
  assert [n for n in mtimes if again[n] != mtimes[n]] == ["psr_vs_leakage.png"]
  assert (tmp_path / "report.md").read_text().count("![") == len(mtimes)


def test_report_transfer_table_has_a_row_per_held_out_model_and_pipeline(tmp_path):
  recs = []
  for m, other in (("dlib", "sface"), ("sface", "dlib")):
    for pipe in ("yunet", "margin"):
      for role, k, models in (("transfer", 1, other), ("white-box", 2, "dlib+sface"),
                              ("clean", 0, "")):
        for u in ("A", "B"):
          for kind in ("probe", "knn"):
            recs.append({"experiment": "transfer", "config": models or "none (clean)",
                         "setting": role, "user": u, "tracker": m if pipe == "yunet"
                         else f"{m}@{pipe}", "kind": kind, "psr": k / 4, "psr_k": k, "psr_n": 4,
                         "acc": 1.0, "acc_k": 5, "acc_n": 5, "role": role, "held_out": m,
                         "pipeline": pipe, "cloak_models": models,
                         **({"heldout_shift": 0.1 * k, "heldout_fooled": 0.5 * (k - 1),
                             "member_shift": {"dlib": 0.3 * k, "sface": 0.4},
                             "member_fooled": {"dlib": 0.0, "sface": 1.0}}
                            if role != "clean" else {})})
  info = {"users": ["A", "B"], "tracker_pipelines": {"margin": {"photos": 9, "fallback": 1}}}
  report.write(tmp_path, recs, info, {"seed": 0})
  md = (tmp_path / "report.md").read_text()
  row = next(l for l in md.splitlines() if l.startswith("| sface | margin |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  # held-out, pipeline, transfer cloak, transfer probe/knn, white-box probe/knn, clean probe/knn
  assert cells[:4] == ["sface", "margin", "dlib", "0.25 +- 0.00 [2/8]"]
  assert cells[5] == "0.50 +- 0.00 [4/8]" and cells[7] == "0.00 +- 0.00 [0/8]"
  assert cells[9:] == ["0.10 / 0.20", "0.00 / 0.50", "1.00 [10/10]"]
  assert "margin 1/9" in md
  # Every model's verdict per cloak ensemble, the held-out one marked.
  assert "| dlib | 0.30 / 0.00 | 0.40 / 1.00 (held out) |" in md
  assert "| dlib+sface | 0.60 / 0.00 | 0.40 / 1.00 |" in md
  assert (tmp_path / "psr_transfer.png").stat().st_size > 1000


def test_crop_robust_probe_on_a_tiny_model():
  from tests.core.tiny import tiny_extractor
  emb = trackers.PortedEmbedder("tiny", extractor=tiny_extractor(), batch_size=8)
  rng = np.random.default_rng(1)
  base = rng.random((3, 1, 32, 32, 3)).astype(np.float32)
  x = np.clip(base + 0.03 * rng.normal(size=(3, 6, 32, 32, 3)), 0, 1).astype(np.float32)
  x, y = x.reshape(-1, 32, 32, 3), np.repeat(np.arange(3), 6)
  clf = trackers.CropRobustProbe(emb, eps=2 / 255, pgd_steps=2, probe_steps=100)
  adv = clf._adversarial(trackers.LinearProbe(steps=50).fit(emb.embed_crops(x), y, 3), x, y)
  assert np.abs(adv - x).max() <= 2 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
  assert metrics.accuracy(clf.fit(x, y, 3).predict(x), y).value >= 0.9


def test_cli_parser_is_light_and_maps_flags_to_settings():
  import argparse
  import subprocess
  import sys
  from jaxcloak.eval import cli, experiments, settings
  assert cli.EXPERIMENT_NAMES == settings.EXPERIMENTS
  assert tuple(experiments.EXPERIMENT_FUNCTIONS) == settings.EXPERIMENTS
  code = ("import argparse, sys; from jaxcloak.eval import cli; "
          "cli.add_parser(argparse.ArgumentParser().add_subparsers()); "
          "print('jax' in sys.modules)")
  assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=True).stdout.strip() == "False"
  p = argparse.ArgumentParser()
  cli.add_parser(p.add_subparsers(dest="command"))
  args = p.parse_args(["eval", "D", "--pool", "P", "-o", "R", "--quick", "--users", "3",
                       "--user-models", "dlib;dlib+sface", "--budgets", "0.01,0.02"])
  s = cli.settings_from_args(args)
  assert s.users == 3 and s.steps == 10 and s.user_models == ("dlib", "dlib+sface")
  assert s.budgets == (0.01, 0.02) and s.base_config().extractors == ("dlib",)
  assert s.base_config("dlib+sface").extractors == ("dlib", "sface")


def test_gap_closed_is_zero_unmoved_and_one_at_the_nearest_other_identity():
  own = np.array([1.0, 0.0, 0.0])
  others = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  clean = np.array([[0.9, 0.3, 0.1], [0.95, 0.1, 0.2]])
  assert abs(metrics.gap_closed(clean, clean, own, others)) < 1e-12
  # Each photo moved to where it is as close to U as to its nearest other centroid: 1.
  unit = clean / np.linalg.norm(clean, axis=1, keepdims=True)
  nearest = others[(unit @ others.T).argmax(axis=1)]
  halfway = (own + nearest) / np.linalg.norm(own + nearest, axis=1, keepdims=True)
  want = (unit @ own - halfway @ own).mean() / (unit @ own - (unit @ others.T).max(1)).mean()
  assert np.isclose(metrics.gap_closed(clean, halfway, own, others), want)
  # Moving toward U's own centroid closes a negative share.
  assert metrics.gap_closed(clean, np.stack([own, own]), own, others) < 0
  # A photo already as close to another identity does not blow the figure up.
  tie = np.array([[1.0, 1.0, 0.0]])
  assert np.isfinite(metrics.gap_closed(np.r_[tie, clean], np.r_[tie, clean], own, others))


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_users():
  rng = np.random.default_rng(0)
  few, many = rng.uniform(0, 1, 5), rng.uniform(0, 1, 200)
  lo, hi = metrics.bootstrap_interval(few)
  assert lo <= few.mean() <= hi
  lo2, hi2 = metrics.bootstrap_interval(many)
  assert hi2 - lo2 < hi - lo
  assert metrics.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
  assert np.isnan(metrics.bootstrap_interval([float("nan")])[0])
