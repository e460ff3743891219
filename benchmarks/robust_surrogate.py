"""How far L-inf PGD moves a model's unit embedding: base vs robust surrogate, real faces.

  .venv/bin/python benchmarks/robust_surrogate.py [--models dlib dlib_robust]
      [--epsilons 0.0078 0.0157] [--steps 10] [--per-identity 5] [--seed 0] [--weights-dir W]

Photos: `--per-identity` per identity of the evaluation faces (never a
training identity of the pool-trained surrogate), the face nearest the photo
centre found by YuNet, aligned to each model's template as the cloak aligns
(`robust_data.aligned_crops`). Attack: `robust_training.make_shift_attack`, PGD with a
random start pushing the embedding away from the clean one (the untargeted
cloak objective), same key for every model. Per model and epsilon: mean and
5th percentile cosine between clean and attacked unit embedding, the share
pushed past the model's own same-person threshold (`fooled`), and the mean
shift in units of that threshold's distance (`shift_rel`: scale-free, since a
fine-tuned model's threshold differs from its base's).

One JSON line per (model, epsilon). Last seen 2026-12-01, 2 shared CPU cores,
jax 0.10.2, `--per-identity 4` (161 faces, ~70 s per model and epsilon);
dlib_robust: 1 epoch, eps 4/255, PGD-3 on the 839-identity pool. cos / fooled /
shift_rel at eps 2/255 and 4/255:
  dlib         0.895 / 0.69 / 1.08    0.790 / 1.00 / 1.53
  dlib_robust  0.904 / 0.00 / 0.43    0.702 / 0.02 / 0.75
(BUILD.md, Robust surrogate, also has the clean fine-tune control.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import FACES, emit, machine  # noqa: E402  (sets sys.path)

from jaxcloak import models, robust_data, robust_training  # noqa: E402
from jaxcloak.faces import io as photo_io  # noqa: E402
from jaxcloak.faces.detect import Detector  # noqa: E402

MAX_DISTANCE = 40.0  # px from the photo centre to the labelled face's box centre


def central_landmarks(files, detector):
  """Landmarks of the face nearest each photo's centre, and the indices of photos with one."""
  rgbs = [photo_io.decode(f.read_bytes(), name=f.name).rgb for f in files]
  lms, keep = [], []
  for i, (rgb, d) in enumerate(zip(rgbs, detector(rgbs))):
    j = d.nearest((rgb.shape[1] / 2, rgb.shape[0] / 2), MAX_DISTANCE)
    if j is not None:
      lms.append(d.landmarks[j])
      keep.append(i)
  return np.asarray(lms, np.float32), keep


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=["dlib", "dlib_robust"])
  ap.add_argument("--epsilons", nargs="+", type=float, default=[2 / 255, 4 / 255])
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--per-identity", type=int, default=5)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--weights-dir", help="where the models' weights are (default: weights/)")
  args = ap.parse_args()

  rng = np.random.default_rng(args.seed)
  files = []
  for d in sorted(p for p in FACES.iterdir() if p.is_dir()):
    photos = sorted(d.glob("*.jpg"))
    k = min(args.per_identity, len(photos))
    files += [photos[i] for i in sorted(rng.choice(len(photos), k, replace=False))]
  t = time.perf_counter()
  lms, keep = central_landmarks(files, Detector(weights_dir=args.weights_dir))
  files = [files[i] for i in keep]
  emit(bench="robust_surrogate_detect", photos=len(keep), seconds=round(time.perf_counter() - t, 1))

  for name in args.models:
    ext = models.load(name, args.weights_dir)
    crops = robust_data.aligned_crops(files, lms, ext)
    attack = robust_training.make_shift_attack(ext, args.steps)
    for eps in args.epsilons:
      t = time.perf_counter()
      cos = robust_training.shift_cosines(attack, ext.params, crops, eps, args.batch_size,
                                          args.seed)
      shift = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
      emit(bench="robust_surrogate", model=name, epsilon=round(eps, 5), steps=args.steps,
           faces=len(cos), cos_mean=round(float(cos.mean()), 4),
           cos_p5=round(float(np.percentile(cos, 5)), 4),
           same_person_cosine=ext.same_person_cosine,
           fooled=round(float((cos < ext.same_person_cosine).mean()), 4),
           shift_rel=round(float(shift.mean() / ext.same_person_distance), 4),
           seconds=round(time.perf_counter() - t, 1), **machine())


if __name__ == "__main__":
  main()
