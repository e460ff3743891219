"""The official Fawkes (PyPI fawkes==1.0.4) end to end, FaceNet as its extractor.

  .venv-ref/bin/python benchmarks/fawkes_peer.py PHOTO... --out DIR [--mode low] [--batch-size 8]

Run by `benchmarks/peer.py` in the TensorFlow venv .venv-ref (which peer.py
builds). Each photo is
copied into --out (Fawkes writes `<name>_cloaked.png` beside its input), and
the photos are cloaked --batch-size at a time, one `Fawkes.run_protection(chunk,
batch_size=B)` call per chunk, as its CLI does with `--batch-size B` (its
default is 1): Fawkes' own loading, MTCNN detection and square crops
(112x112), its mode settings (low: DSSIM 0.004, 40 Adadelta steps at lr 25;
mid: 0.012, 75, 20; high: 0.017, 150, 15), its untargeted loss (`maximize`,
the CLI's sd 1e6), merge and PNG writing. One JSON line per photo (its chunk's
wall and process CPU seconds shared evenly, faces, the output file) and a
summary line; Fawkes' own prints go to stderr.

Setup in .venv-ref (Fawkes pins TF 2.4 / Keras 2; --no-deps keeps TF 2.21,
Keras 3 and NumPy 2 as they are):

  pip install "tensorflow-cpu==2.21.*" h5py
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
  parser.add_argument("--batch-size", type=int, default=1,
                      help="photos per run_protection call and per optimisation batch")
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
    """Fawkes' Faces, noting how many faces each photo of a chunk gave."""

    def __init__(self, image_paths, *a, **k):
      super().__init__(image_paths, *a, **k)
      faces.extend(np.bincount(np.asarray(self.callback_idx, np.int64),
                               minlength=len(image_paths)).tolist())

  fawkes.protection.Faces = CountingFaces
  walls, cpus, done = [], [], 0
  b = args.batch_size
  for start in range(0, len(args.photos), b):  # one run_protection per chunk, as the CLI's
    chunk = []
    for i, src in enumerate(args.photos[start:start + b], start):
      dst = args.out / f"{i:03d}_{src.parent.name}_{src.name}"
      shutil.copyfile(src, dst)
      chunk.append((src, dst))
    seen = len(faces)
    t, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):
      status = protector.run_protection([str(d) for _, d in chunk], sd=1e6, batch_size=b,
                                        format="png")
    wall, cpu = (time.perf_counter() - t) / len(chunk), (time.process_time() - c) / len(chunk)
    counts = faces[seen:] if len(faces) > seen else [0] * len(chunk)
    for (src, dst), n_faces in zip(chunk, counts):
      out = dst.with_name(dst.stem + "_cloaked.png")
      walls.append(wall)
      cpus.append(cpu)
      done += out.exists()
      print(json.dumps(dict(peer="fawkes", photo=f"{src.parent.name}/{src.name}", seconds=wall,
                            cpu_seconds=cpu, chunk=start // b, faces=int(n_faces),
                            status=int(status), output=str(out) if out.exists() else None)),
            flush=True)
  n = len(walls)
  # The first chunk also pays TF's one-off kernel and trace setup.
  first = min(b, n)
  steady = walls[first:] or walls
  steady_cpu = cpus[first:] or cpus
  print(json.dumps(dict(
      peer="fawkes", summary=True, fawkes="1.0.4", tensorflow=tf.__version__, mode=args.mode,
      th=protector.th, max_step=protector.max_step, lr=protector.lr, extractor="facenet",
      batch_size=b, photos=n, written=done, faces=sum(faces), **setup,
      seconds_per_photo=sum(walls) / n, cpu_seconds_per_photo=sum(cpus) / n,
      steady_seconds_per_photo=sum(steady) / len(steady),
      steady_cpu_seconds_per_photo=sum(steady_cpu) / len(steady_cpu),
      first_chunk_s=walls[0] * first,
      maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)), flush=True)


if __name__ == "__main__":
  main()
