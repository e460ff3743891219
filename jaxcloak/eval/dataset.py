"""Evaluation data: identity folders -> decoded, detected samples and splits.

A folder of identity subfolders (`DATA/<identity>/<photo>`) becomes a list of
`Sample`s: the photo's upright uint8 RGB pixels and its detected faces, with
the main (largest) face's landmarks used by every tracker. Photos without a
face are dropped and counted, as a tracker would drop them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxcloak.faces import io as photo_io
from jaxcloak.pipeline.cloaker import IMAGE_SUFFIXES


@dataclasses.dataclass
class Sample:
  """One image a tracker sees (a clean photo, a cloaked one, or a transformed one)."""
  key: str  # unique id; feature caches are keyed by it
  identity: str
  rgb: np.ndarray  # [h, w, 3] uint8
  landmarks: np.ndarray  # [5, 2] main face landmarks (photo pixels)
  boxes: np.ndarray  # [n, 4] every detected face (x, y, w, h)
  scores: np.ndarray  # [n]
  all_landmarks: np.ndarray  # [n, 5, 2]
  data: bytes = b""  # the encoded file the pixels came from
  path: str = ""


def scan(folder: Path) -> dict[str, list[Path]]:
  """identity -> sorted image files, for every non-hidden subfolder with images."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: not a folder of identity subfolders")
  out = {}
  for d in sorted(folder.iterdir()):
    if d.is_dir() and not d.name.startswith("."):
      files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")
                     and p.suffix.lower() in IMAGE_SUFFIXES)
      if files:
        out[d.name] = files
  if not out:
    raise ValueError(f"{folder} has no identity subfolders with images")
  return out


def subsample(ids: dict[str, list[Path]], *, max_identities: int | None, max_photos: int | None,
              min_photos: int = 1, keep: Sequence[str] = (), seed: int = 0) -> dict[str, list[Path]]:
  """Deterministic subset: identities with >= min_photos, at most max_photos each.

  `keep` identities are always included (if eligible); the rest are drawn at random.
  """
  rng = np.random.default_rng(seed)
  names = [n for n in sorted(ids) if len(ids[n]) >= min_photos]
  kept = [n for n in keep if n in names]
  rest = [n for n in names if n not in kept]
  if max_identities is not None and len(kept) + len(rest) > max_identities:
    rest = sorted(rng.choice(rest, size=max(0, max_identities - len(kept)), replace=False).tolist())
  out = {}
  for n in sorted(kept + rest):
    files = list(ids[n])
    if max_photos is not None and len(files) > max_photos:
      files = sorted(rng.choice(files, size=max_photos, replace=False).tolist())
    out[n] = files
  return out


def detect_samples(detector, keys: Sequence[str], identities: Sequence[str],
                   images: Sequence[np.ndarray], *, datas: Sequence[bytes] | None = None,
                   paths: Sequence[str] | None = None, batch: int = 16,
                   fallback: Sequence[np.ndarray | None] | None = None) -> list[Sample | None]:
  """Detects faces and builds Samples; None where no face was found (and no fallback)."""
  out: list[Sample | None] = []
  for start in range(0, len(images), batch):
    dets = detector(list(images[start:start + batch]))
    for j, d in enumerate(dets):
      i = start + j
      if len(d.scores):
        m = int(np.argmax(d.boxes[:, 2] * d.boxes[:, 3]))
        lm = np.asarray(d.landmarks[m], np.float32)
        boxes, scores, lms = d.boxes, d.scores, d.landmarks
      elif fallback is not None and fallback[i] is not None:
        lm = np.asarray(fallback[i], np.float32)
        boxes, scores, lms = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), \
            np.zeros((0, 5, 2), np.float32)
      else:
        out.append(None)
        continue
      out.append(Sample(keys[i], identities[i], images[i], lm, np.asarray(boxes),
                        np.asarray(scores), np.asarray(lms),
                        datas[i] if datas is not None else b"",
                        paths[i] if paths is not None else ""))
  return out


def load_samples(detector, ids: dict[str, list[Path]], *, prefix: str,
                 log: Callable[[str], None] = print) -> tuple[dict[str, list[Sample]], dict]:
  """Decodes and detects every photo; returns identity -> samples and drop counts."""
  keys, names, images, datas, paths = [], [], [], [], []
  dropped = {"undecodable": 0, "no_face": 0}
  for name, files in ids.items():
    for p in files:
      data = p.read_bytes()
      try:
        rgb = photo_io.decode(data, name=str(p)).rgb
      except photo_io.PhotoError:
        dropped["undecodable"] += 1
        continue
      keys.append(f"{prefix}/{name}/{p.name}")
      names.append(name)
      images.append(rgb)
      datas.append(data)
      paths.append(str(p))
  log(f"detecting faces in {len(images)} photos of {len(ids)} identities ({prefix})")
  samples = detect_samples(detector, keys, names, images, datas=datas, paths=paths)
  out: dict[str, list[Sample]] = {n: [] for n in ids}
  for s in samples:
    if s is None:
      dropped["no_face"] += 1
    else:
      out[s.identity].append(s)
  return {n: v for n, v in out.items() if v}, dropped


@dataclasses.dataclass
class Split:
  """One identity's photos split for the tracker."""
  train: list[Sample]
  test: list[Sample]


def split_identities(samples: dict[str, list[Sample]], users: Sequence[str], *,
                     train_per_user: int, train_fraction: float = 0.7,
                     seed: int = 0) -> dict[str, Split]:
  """Users: `train_per_user` photos to cloak, the rest clean test photos.

  Other identities: `train_fraction` of their photos for training (at least
  one), the rest test photos for the tracker's normal accuracy.
  """
  out = {}
  for i, (name, ss) in enumerate(sorted(samples.items())):
    order = np.random.default_rng([seed, i]).permutation(len(ss))
    ss = [ss[j] for j in order]
    if name in users:
      k = train_per_user
    else:
      k = max(1, min(len(ss) - 1, int(round(train_fraction * len(ss))))) if len(ss) > 1 else 1
    out[name] = Split(ss[:k], ss[k:])
  return out


def pick_users(samples: dict[str, list[Sample]], *, n: int, train_per_user: int,
               min_test: int = 2, seed: int = 0, names: Sequence[str] = ()) -> list[str]:
  """Users: the named ones, else n identities with enough photos, drawn at random."""
  need = train_per_user + min_test
  if names:
    bad = [u for u in names if len(samples.get(u, ())) < need]
    if bad:
      raise ValueError(f"users without {need} photos with a face: {', '.join(bad)}")
    return list(names)
  eligible = sorted(u for u, ss in samples.items() if len(ss) >= need)
  if not eligible:
    raise ValueError(f"no identity has {need} photos with a face "
                     f"(train {train_per_user} + test {min_test})")
  rng = np.random.default_rng(seed)
  return sorted(rng.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())
