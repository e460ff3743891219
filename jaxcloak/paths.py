"""Where outputs may go: never onto, into or around what is read.

One rule for every entry point (`cloak`, `migrate`, `check` and the Python
API): an output folder may not be an input folder, lie inside one, or hold
one, and symlinks count where they lead. An input file protects its own
folder, the only place its output name could land on it. The same rule is
held again for every file as it is written (`output_file`), since a symlink made
inside the output folder can lead back into an input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


class OverlapError(ValueError):
  """An output folder that could overwrite an input, or be read as one."""


def refuse_overlap(output: Path, inputs: Iterable[Path], *, what: str = "output folder") -> None:
  """Raises OverlapError unless `output` keeps clear of every input.

  Args:
    output: the folder outputs are written under (need not exist yet).
    inputs: files and folders that are only read.
    what: how the error names `output` (e.g. "-o", "DST").
  """
  out = Path(output).resolve()
  for given in inputs:
    src = Path(given).resolve()
    if src.is_file():
      if out in (src.parent, Path(given).absolute().parent.resolve()):
        raise OverlapError(f"{what} {output} is the folder of input {given}: it would overwrite "
                           "the original; give another folder (originals are never modified)")
      continue
    if out == src or out.is_relative_to(src):
      raise OverlapError(f"{what} {output} is {'' if out == src else 'inside '}input {given}: "
                         "it would overwrite originals or be read as one; give a folder outside "
                         "it (originals are never modified)")
    if src.is_relative_to(out):
      raise OverlapError(f"{what} {output} holds input {given}: outputs could land on "
                         "originals; give a folder outside it (originals are never modified)")


def output_file(root: Path, rel: str, source: Path | None = None) -> Path:
  """root/rel, checked as it is about to be written: its folder, symlinks followed,
  lies in root's, and it is not `source` (an input reached through a symlink)."""
  path = Path(root) / rel
  where = path.parent.resolve()
  if not where.is_relative_to(Path(root).resolve()):
    raise OverlapError(f"{path}: its folder leads outside the output folder {root} (through a "
                       f"symlink, to {where}); not written")
  if source is not None and (where / path.name).resolve() == Path(source).resolve():
    raise OverlapError(f"{path}: is input {source} (through a symlink); not written")
  return path
