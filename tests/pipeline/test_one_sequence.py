"""`cloak` and `migrate` run one stage sequence: the same photos with the same flags give
byte-identical outputs and the same per-photo results, whichever command wrote them."""

from __future__ import annotations

import json

import fsspec
from PIL import Image

import jaxcloak
from jaxcloak import cli
from jaxcloak.pipeline import migrate as mig
from jaxcloak.pipeline.manifest import Manifest
from tests.pipeline import corpus
from tests.test_originals import snapshot

# Flags both commands take, including ones the two used to honour differently
# (refine rounds and the JPEG quality were once cloak-only).
FLAGS = ["--mode", "untargeted", "--extractors", "dlib", "--views", "0", "--steps", "2",
         "--batch-size", "4", "--max-region", "64", "--refine-rounds", "1",
         "--jpeg-quality", "88", "--quiet"]
# The same settings as Python keywords.
FIELDS = dict(mode="untargeted", extractors=("dlib",), views=0, steps=2, batch_size=4,
              max_region=64, refine_rounds=1, jpeg_quality=88)


def test_cloak_and_migrate_write_the_same_bytes(tmp_path, faces_dir, jax_cache):
  src = tmp_path / "src"
  who = sorted(d for d in faces_dir.iterdir() if d.is_dir())[0]
  face = corpus.face_image(faces_dir, side=120)
  corpus.write(src, f"{who.name}/small.jpg", corpus.jpeg(face, quality=93))
  corpus.write(src, f"{who.name}/small.png", corpus.png(face))
  corpus.write(src, f"{who.name}/blank.png", corpus.png(Image.new("RGB", (120, 120), "gray")))
  common = [*FLAGS, "--compile-cache", str(jax_cache)]
  before = snapshot(src)
  assert cli.main(["cloak", str(src), "-o", str(tmp_path / "cloak"), *common]) == 0
  assert cli.main(["migrate", str(src), str(tmp_path / "migrate"), *common]) == 0
  # The Python API is the same code behind the flags: same bytes, the URL DST untouched.
  api_summary = jaxcloak.cloak([str(src)], str(tmp_path / "api"), **FIELDS)
  url = f"memory://one-sequence-{tmp_path.name}"
  jaxcloak.migrate(str(src), url, **FIELDS)
  assert snapshot(src) == before, "an input's bytes or mtime changed"

  report = {r["input"]: r for r in map(json.loads, (tmp_path / "cloak/report.jsonl").open())}
  manifest = {r["input"]: r for r in Manifest(tmp_path / "migrate" / mig.META_DIR /
                                              "manifest.jsonl").records()}
  assert set(report) == set(manifest) == {f"{who.name}/{n}" for n in
                                           ("small.jpg", "small.png", "blank.png")}
  assert any(r["status"] == "cloaked" for r in manifest.values())
  api_report = {r["input"]: r for r in map(json.loads, open(api_summary["report"]))}
  fs = fsspec.filesystem("memory")
  for rel, r in report.items():
    assert (tmp_path / "api" / rel).read_bytes() == (tmp_path / "cloak" / rel).read_bytes(), rel
    assert fs.cat(f"{url}/{rel}") == (tmp_path / "cloak" / rel).read_bytes(), rel
    assert {k: v for k, v in api_report[rel].items() if k != "seconds"} == {
        k: v for k, v in r.items() if k != "seconds"}, rel
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
