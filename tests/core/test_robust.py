"""Robust surrogate: a real tiny PGD fine-tune end to end, the attack's bound, CLI errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcloak import cli, models, robust_training, weights
from tests.conftest import POOL, ensure_weights

BASE = "dlib"  # the cheapest to train on CPU (BUILD.md, Robust surrogate)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
  """A weights folder holding only the base and YuNet, so the test never touches the real one."""
  src = weights.default_weights_dir()
  out = tmp_path_factory.mktemp("weights")
  manifest = {}
  for name in (BASE, "yunet"):
    ensure_weights(name)
    shutil.copy(src / f"{name}.safetensors", out)
    manifest[name] = weights.read_manifest(src)[name]
  (out / weights.MANIFEST).write_text(json.dumps(manifest))
  return out


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
  """6 pool identities x 3 photos (symlinks to the real files)."""
  out = tmp_path_factory.mktemp("pool")
  ids = [d for d in sorted(POOL.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 3][:6]
  for d in ids:
    (out / d.name).mkdir()
    for p in sorted(d.glob("*.jpg"))[:3]:
      (out / d.name / p.name).symlink_to(p)
  return out


def test_pgd_stays_within_epsilon_and_the_unit_box():
  key = jax.random.key(0)
  x = jax.random.uniform(key, (4, 8, 8, 3))
  x = x.at[0].set(0.0).at[1].set(1.0)  # corners: the [0, 1] clip must bind
  c = jax.random.normal(jax.random.key(1), x.shape)
  eps = jnp.float32(3 / 255)
  adv = robust_training.pgd(jax.random.key(2), lambda xx: jnp.sum(xx * c), x, eps, 3)
  d = np.asarray(adv - x)
  assert np.abs(d).max() <= 3 / 255 + 1e-6
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  # A linear loss is maximised at the box corner in the gradient's sign.
  inside = (np.asarray(x) > eps) & (np.asarray(x) < 1 - eps)
  np.testing.assert_allclose(d[inside], (3 / 255) * np.sign(np.asarray(c))[inside], atol=1e-6)


@pytest.mark.slow
def test_tiny_run_writes_loads_and_changes_params(weights_dir, tiny_pool, tmp_path, capsys):
  rc = cli.main(["weights", "robust", BASE, "--data", str(tiny_pool), "--epochs", "1",
                 "--pgd-steps", "1", "--batch-size", "8", "--holdout", "0.34",
                 "--learning-rate", "1e-4", "--weights-dir", str(weights_dir)])
  assert rc == 0, capsys.readouterr().err
  name = f"{BASE}_robust"
  entry = weights.read_manifest(weights_dir)[name]
  assert (weights_dir / entry["output"]).exists()
  assert entry["output_sha256"] == weights.sha256_file(weights_dir / entry["output"])
  assert entry["base"] == BASE and entry["source_sha256"] == weights.read_manifest(
      weights_dir)[BASE]["output_sha256"]
  for k in ("data_sha256", "epsilon", "steps", "epochs", "seed", "date"):
    assert entry[k] is not None, k
  assert (entry["epochs"], entry["steps"]) == (1, 1)
  assert entry["identities"] == 4 and entry["held_out_identities"] == 2
  assert entry["held_out"]["base"]["pairs"] > 0

  base, tuned = models.load(BASE, weights_dir), models.load(name, weights_dir)
  assert name not in models.EXTRACTORS
  assert (tuned.name, tuned.input_size, tuned.embedding_dim) == (name, base.input_size,
                                                                 base.embedding_dim)
  np.testing.assert_array_equal(tuned.template, base.template)
  assert tuned.same_person_cosine == pytest.approx(entry["same_person_cosine"])
  a, b = weights.flatten(base.params), weights.flatten(tuned.params)
  assert a.keys() == b.keys()
  changed = [k for k in a if not np.array_equal(a[k], b[k])]
  assert len(changed) > len(a) // 2 and all(np.isfinite(b[k]).all() for k in b)
  x = np.full((1, base.input_size, base.input_size, 3), 0.5, np.float32)
  assert np.isfinite(np.asarray(tuned.embed(tuned.params, x))).all()


@pytest.mark.parametrize("case", ["missing", "no_identities", "unknown_base"])
def test_cli_errors_are_one_line_and_exit_2(case, tmp_path, capsys):
  data, base = tmp_path / "data", BASE
  if case == "no_identities":
    data.mkdir()
    (data / "loose.jpg").write_bytes(b"not a folder of identities")
  elif case == "unknown_base":
    base = "nosuchmodel"
    data.mkdir()
  rc = cli.main(["weights", "robust", base, "--data", str(data), "--weights-dir", str(tmp_path)])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert {"missing": "does not exist", "no_identities": "identity subfolders",
          "unknown_base": "unknown base model"}[case] in err[0]


def test_unknown_variant_names_the_command_that_makes_it(tmp_path):
  with pytest.raises(KeyError, match="jaxcloak weights robust sface"):
    models.load("sface_robust", tmp_path)
