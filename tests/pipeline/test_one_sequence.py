"""`cloak` and `migrate` run one stage sequence: the same photos with the same flags give
byte-identical outputs and the same per-photo results, whichever command wrote them."""

from __future__ import annotations

import json

from PIL import Image

from jaxcloak import cli
from jaxcloak.pipeline import migrate as mig
from jaxcloak.pipeline.manifest import Manifest
from tests.pipeline import corpus

# Flags both commands take, including ones the two used to honour differently
# (refine rounds and the JPEG quality were once cloak-only).
FLAGS = ["--mode", "untargeted", "--extractors", "dlib", "--views", "0", "--steps", "2",
         "--batch-size", "4", "--max-region", "64", "--refine-rounds", "1",
         "--jpeg-quality", "88", "--quiet"]


def test_cloak_and_migrate_write_the_same_bytes(tmp_path, faces_dir, jax_cache):
  src = tmp_path / "src"
  who = sorted(d for d in faces_dir.iterdir() if d.is_dir())[0]
  face = corpus.face_image(faces_dir, side=120)
  corpus.write(src, f"{who.name}/small.jpg", corpus.jpeg(face, quality=93))
  corpus.write(src, f"{who.name}/small.png", corpus.png(face))
  corpus.write(src, f"{who.name}/blank.png", corpus.png(Image.new("RGB", (120, 120), "gray")))
  common = [*FLAGS, "--compile-cache", str(jax_cache)]
  assert cli.main(["cloak", str(src), "-o", str(tmp_path / "cloak"), *common]) == 0
  assert cli.main(["migrate", str(src), str(tmp_path / "migrate"), *common]) == 0

  report = {r["input"]: r for r in map(json.loads, (tmp_path / "cloak/report.jsonl").open())}
  manifest = {r["input"]: r for r in Manifest(tmp_path / "migrate" / mig.META_DIR /
                                              "manifest.jsonl").records()}
  assert set(report) == set(manifest) == {f"{who.name}/{n}" for n in
                                           ("small.jpg", "small.png", "blank.png")}
  assert any(r["status"] == "cloaked" for r in manifest.values())
  for rel, m in manifest.items():
    r = report[rel]
    assert (tmp_path / "cloak" / rel).read_bytes() == (tmp_path / "migrate" / rel).read_bytes(), rel
    assert r["status"] == m["status"], rel
    assert r["target"] == m["target"] and r["message"] == m["message"], rel
    assert sorted(f["status"] for f in r["faces"]) == sorted(
        s for s, n in m["face_status"].items() for _ in range(n)), rel
    dssims = [f["dssim"] for f in r["faces"] if f["status"] == "cloaked"]
    assert (round(max(dssims), 6) if dssims else None) == m["dssim"], rel
    assert r["notes"] == m["notes"], rel
