"""Compiled programs kept whole on disk: a later run skips tracing as well as compiling.

JAX's persistent cache (compile_cache.py) keeps the compiled code, but finding an
entry needs the function traced and lowered first, and that is seconds of Python
for a recognizer's graph: most of what a repeated small job waits for. A program
saved as its StableHLO export (`jax.export`) is found instead from what defines it,
without tracing, and its compile then comes from JAX's cache:
- its name and key: everything the jitted function closes over (a config's program
  fields, the models' names), which the caller must state in full;
- the structure, shapes, dtypes and shardings of its arguments;
- jaxcloak's own source, jax and jaxlib versions, and the devices (`_machine`), so an
  edit to any module or an upgrade starts afresh.
Saved beside JAX's cache (`<cache>/programs`), so `--compile-cache off` turns both off.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from pathlib import Path

import jax

from jaxcloak import files

SUBFOLDER = "programs"  # of the compile cache's folder
_PACKAGE = Path(__file__).resolve().parent
_folder: Path | None = None


def enable(folder: Path | None) -> None:
  """Saves and loads programs in `folder` (created); None turns saving off."""
  global _folder
  if folder is not None:
    folder.mkdir(parents=True, exist_ok=True)
  _folder = folder


@functools.cache
def _machine() -> bytes:
  """What a program depends on besides its key and arguments."""
  import jaxlib
  h = hashlib.sha256()
  for path in sorted(_PACKAGE.rglob("*.py")):
    h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
  devices = jax.local_devices()
  h.update(repr((jax.__version__, jaxlib.__version__, jax.default_backend(),
                 [d.device_kind for d in devices])).encode())
  return h.digest()


def _entry(kind: str, key: str, signature: tuple) -> Path:
  """The file of one saved thing, named by all it depends on."""
  name = hashlib.sha256(_machine() + repr((kind, key, signature)).encode()).hexdigest()[:40]
  return _folder / f"{name}.{kind}"


def _save(path: Path, value) -> None:
  try:
    files.atomic_write(path, pickle.dumps(value))
  except OSError:  # a full or read-only cache only costs the next run this trace
    pass


def _arguments(args) -> tuple:
  leaves, tree = jax.tree_util.tree_flatten(args)
  return (str(tree), tuple(map(_signature, leaves)))


def _signature(x) -> tuple:
  if hasattr(x, "shape") and hasattr(x, "dtype"):  # arrays of every kind, and bare shapes
    return (type(x).__name__, tuple(x.shape), str(x.dtype), getattr(x, "weak_type", False),
            repr(getattr(x, "sharding", None)))
  return (type(x).__name__,)  # a Python scalar: weakly typed, its type is its shape


class Program:
  """A jitted function whose compiled programs are reused across processes.

  Called like the function. With saving off it is the plain jitted function.
  """

  def __init__(self, jitted, key: str):
    self.jitted, self.key = jitted, key
    self._loaded: dict[tuple, object] = {}

  def lower(self, *args):
    return self.jitted.lower(*args)

  def __call__(self, *args):
    if _folder is None:
      return self.jitted(*args)
    signature = _arguments(args)
    program = self._loaded.get(signature)
    if program is None:
      program = self._loaded[signature] = self._load_or_compile(args, signature)
    return program(*args)

  def _load_or_compile(self, args, signature):
    """jit(call of the saved export), built from the file or, failing that, by tracing."""
    path = _entry("export", self.key, signature)
    try:
      data, out_tree = pickle.loads(path.read_bytes())
      exported = jax.export.deserialize(data)
    except Exception:  # not saved yet, or unreadable: trace it again and (re)write it
      exported, out_tree = self._export(args)
      _save(path, (exported.serialize(), out_tree))
    call = jax.jit(exported.call)
    return lambda *a: jax.tree_util.tree_unflatten(out_tree, call(*jax.tree_util.tree_leaves(a)))

  def _export(self, args):
    leaves, tree = jax.tree_util.tree_flatten(args)
    out_tree = []

    def flat(*leaves):  # arrays in, arrays out: the export's own trees stay plain tuples
      out, treedef = jax.tree_util.tree_flatten(self.jitted(*jax.tree_util.tree_unflatten(tree, leaves)))
      out_tree.append(treedef)
      return out

    exported = jax.export.export(jax.jit(flat))(*leaves)
    return exported, out_tree[0]


def shapes(key: str, fn, *args):
  """`jax.eval_shape(fn, *args)`, kept on disk like a program: tracing a model's init for
  its parameter shapes costs about a second per model and run. `key` names `fn` in full."""
  if _folder is None:
    return jax.eval_shape(fn, *args)
  path = _entry("shapes", key, _arguments(args))
  try:
    return pickle.loads(path.read_bytes())
  except Exception:  # not saved yet, or unreadable
    result = jax.eval_shape(fn, *args)
    _save(path, result)
    return result


def saved(key: str):
  """Decorator: a module-level function jitted as a Program under `key`."""
  return lambda fn: Program(jax.jit(fn), key)
