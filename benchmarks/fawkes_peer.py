"""The official Fawkes (PyPI fawkes==1.0.4) end to end per photo, FaceNet as its extractor.

  .venv-ref/bin/python benchmarks/fawkes_peer.py PHOTO... --out DIR [--mode low]

Run by `benchmarks/cloak.py --fawkes` in the TensorFlow venv (.venv-ref; see
there). Each photo is copied into --out (Fawkes writes `<name>_cloaked.png`
beside its input) and cloaked by one `Fawkes.run_protection([photo])` call,
as its CLI does with batch size 1: Fawkes' own loading, MTCNN detection and
square crops (112x112), its mode settings (low: DSSIM 0.004, 40 Adadelta
steps at lr 25; mid: 0.012, 75, 20; high: 0.017, 150, 15), its untargeted
loss (`maximize`, the CLI's sd 1e6), merge and PNG writing. One JSON line per
photo (wall and process CPU seconds, faces) and a summary line; Fawkes' own
prints go to stderr.

Setup in .venv-ref (Fawkes pins TF 2.4 / Keras 2; --no-deps keeps TF 2.21,
Keras 3 and NumPy 2 as they are):

  pip install --no-deps fawkes==1.0.4 mtcnn==0.1.1 pillow==13.0.0 \\
      opencv-python-headless==5.0.0.93 tf-keras==2.21.0

Patches, made here at import time (nothing of Fawkes is copied):
- Extractor: Fawkes downloads `extractor_2.h5` (and `extractor_0.h5` for
  mid/high), checks their MD5 and `load_model`s them; there is no network
  here. `load_extractor` is replaced so every name gives the FaceNet
  Inception-ResNet-v1 that jaxcloak uses, rebuilt layer by layer with weights
  set by name by tests/reference/make_facenet_fixtures.py (never `load_model`:
  the .h5's Lambdas carry marshalled code). It sits inside Fawkes' own
  `Extractor` (input / 255, model, L2 normalisation); the model it wraps
  undoes the / 255, resizes Fawkes' 112x112 crop to 160x160 (bilinear) and
  standardises each image as FaceNet's `prewhiten` does. mid/high name two
  extractors, which would both be this one model: the list is cut to one, so
  every mode uses FaceNet once per step, as jaxcloak's `--extractors facenet`.
- Optimiser: Fawkes replaces its `modifier` variable after the first step and
  keeps its Adadelta. TF 2.4's OptimizerV2 made slots for the new variable;
  Keras 3's optimisers refuse a variable they were not built with, so
  `tf.keras.optimizers.Adadelta` is tf_keras' legacy (OptimizerV2) Adadelta.
- MTCNN weights: mtcnn 0.1.1 `np.load`s a pickled dict of arrays with
  allow_pickle. It is read here with an unpickler that allows only NumPy's
  array reconstruction (no other code can run), then set on mtcnn's own nets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts/lists of NumPy arrays and refuses every other global."""

  ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"refused global {module}.{name}")
    return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _mtcnn_nets_from_file(self, weights_file):
  """mtcnn's `build_P_R_O_nets_from_file` with a restricted read of its .npy."""
  f = open(weights_file, "rb") if isinstance(weights_file, (str, Path)) else weights_file
  with f:
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)  # a 0-d object array: the pickle follows
    weights = _ArraysOnly(f).load().tolist()  # as mtcnn: the 0-d array's dict
  nets = self.build_pnet(), self.build_rnet(), self.build_onet()
  for net, key in zip(nets, ("pnet", "rnet", "onet")):
    net.set_weights(weights[key])
  return nets


class FaceNetInput:
  """The `model` in Fawkes' Extractor: its [0, 1] 112x112 faces -> FaceNet embeddings."""

  def __init__(self, net):
    self.net = net

  @property
  def variables(self):
    # Fawkes `tape.watch`es these; Keras 3 variables hold the tf.Variable in .value.
    return [v.value for v in self.net.weights]

  def __call__(self, x):
    x = tf.image.resize(tf.convert_to_tensor(x, tf.float32) * 255.0, (160, 160))
    mean, var = tf.nn.moments(x, axes=[1, 2, 3], keepdims=True)
    std = tf.maximum(tf.sqrt(var), 1.0 / np.sqrt(160 * 160 * 3))  # prewhiten's floor
    return self.net((x - mean) / std, training=False)


def patch_fawkes(h5: Path):
  """Imports Fawkes with the three patches above; returns its `Fawkes` class."""
  import tf_keras
  from mtcnn.network.factory import NetworkFactory
  NetworkFactory.build_P_R_O_nets_from_file = _mtcnn_nets_from_file
  tf.keras.optimizers.Adadelta = tf_keras.optimizers.legacy.Adadelta

  import fawkes.protection
  import fawkes.utils
  from make_facenet_fixtures import build_keras_model
  cache = {}

  def load_extractor(name):
    if "facenet" not in cache:
      cache["facenet"] = fawkes.utils.Extractor(FaceNetInput(build_keras_model(h5)))
    return cache["facenet"]

  fawkes.utils.load_extractor = fawkes.protection.load_extractor = load_extractor
  return fawkes.protection.Fawkes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("photos", nargs="+", type=Path)
  parser.add_argument("--out", type=Path, required=True, help="folder for copies and outputs")
  parser.add_argument("--mode", default="low", choices=["low", "mid", "high"])
  parser.add_argument("--h5", type=Path, help="facenet_keras_2024.h5 (default: from the wheel)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  np.random.seed(args.seed)  # Fawkes draws its initial modifier with np.random
  tf.random.set_seed(args.seed)
  args.out.mkdir(parents=True, exist_ok=True)

  t, c = time.perf_counter(), time.process_time()
  with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
    from make_facenet_fixtures import extract_h5
    Fawkes = patch_fawkes(args.h5 or extract_h5(Path(tmp)))
    protector = Fawkes("facenet", None, 1, mode=args.mode)  # gpu None: no CUDA setup
    protector.feature_extractors_ls = protector.feature_extractors_ls[:1]  # FaceNet once
  setup = dict(setup_s=time.perf_counter() - t, setup_cpu_s=time.process_time() - c)

  import fawkes.protection
  faces = []

  class CountingFaces(fawkes.protection.Faces):
    """Fawkes' Faces, noting how many faces each photo gave."""

    def __init__(self, *a, **k):
      super().__init__(*a, **k)
      faces.append(len(self.cropped_faces))

  fawkes.protection.Faces = CountingFaces
  walls, cpus, done = [], [], 0
  for i, src in enumerate(args.photos):  # one run_protection per photo, as the CLI's batch 1
    dst = args.out / f"{i:03d}_{src.parent.name}_{src.name}"
    shutil.copyfile(src, dst)
    seen = len(faces)
    t, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):
      status = protector.run_protection([str(dst)], sd=1e6, batch_size=1, format="png")
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
    out = dst.with_name(dst.stem + "_cloaked.png")
    done += out.exists()
    print(json.dumps(dict(peer="fawkes", photo=f"{src.parent.name}/{src.name}", seconds=walls[-1],
                          cpu_seconds=cpus[-1], faces=faces[-1] if len(faces) > seen else 0,
                          status=int(status), written=out.exists())), flush=True)
  n = len(walls)
  steady = walls[1:] or walls  # the first photo also pays TF's one-off kernel and trace setup
  steady_cpu = cpus[1:] or cpus
  print(json.dumps(dict(
      peer="fawkes", summary=True, fawkes="1.0.4", tensorflow=tf.__version__, mode=args.mode,
      th=protector.th, max_step=protector.max_step, lr=protector.lr, extractor="facenet",
      photos=n, written=done, faces=sum(faces), **setup,
      seconds_per_photo=sum(walls) / n, cpu_seconds_per_photo=sum(cpus) / n,
      steady_seconds_per_photo=sum(steady) / len(steady),
      steady_cpu_seconds_per_photo=sum(steady_cpu) / len(steady_cpu),
      first_photo_s=walls[0],
      maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)), flush=True)


if __name__ == "__main__":
  main()
