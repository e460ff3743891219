"""What a saved person cloak costs on a new photo, against a search per photo.

  .venv/bin/python benchmarks/person_reuse.py [--preset mid] [--enrol 8] [--new 16]
                                              [--people 2]

Real faces from ../shared/data/faces, one engine per scope, in one process:

- `person`: each person's cloak is made from --enrol photos (one joint search),
  then --new further photos of each person are cloaked with the saved cloak
  (grouping, carrying the field onto each face, writing and checking the file:
  everything a later batch pays). The figure the issue bounds (0.2 s/face) is
  that second batch's seconds per face.
- `photo` (the peer): the same --new photos, each with its own search.

Both engines are warmed on the enrolment photos first, so compiles are not
counted. Untargeted (no pool needed; the search cost is the same). One JSON line
per measurement: wall and process-CPU seconds per face.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxcloak.config import preset
from jaxcloak.pipeline import stages
from jaxcloak.pipeline.cloaker import Cloaker
from jaxcloak.pipeline.records import Item

FACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces"


def _items(people, files):
  return [Item(f"{p.name}/{f.name}", f.read_bytes(), p.name) for p in people for f in files[p]]


def _cloak(engine, items, book=None):
  live = stages.decode(engine, items)
  stages.detect(engine, live)
  t0, c0 = time.perf_counter(), time.process_time()
  stages.cloak(engine, live, {}, book=book)
  faces = sum(1 for it in items for f in it.faces if f.status == "cloaked")
  return faces, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="mid")
  ap.add_argument("--enrol", type=int, default=8)
  ap.add_argument("--new", type=int, default=16)
  ap.add_argument("--people", type=int, default=2)
  args = ap.parse_args()
  people = [d for d in sorted(FACES.iterdir()) if d.is_dir()
            and len(list(d.glob("*.jpg"))) >= args.enrol + args.new][:args.people]
  photos = {p: sorted(p.glob("*.jpg")) for p in people}
  enrol = {p: photos[p][:args.enrol] for p in people}
  new = {p: photos[p][args.enrol:args.enrol + args.new] for p in people}
  from jaxcloak import persons
  for scope in ("person", "photo"):
    config = preset(args.preset, mode="untargeted", scope=scope)
    engine = Cloaker(config)
    book = persons.Book(config, engine.extractors) if scope == "person" else None
    faces, wall, cpu = _cloak(engine, _items(people, enrol), book)  # warm-up (and enrolment)
    print(json.dumps({"scope": scope, "phase": "enrol (compiles included)", "faces": faces,
                      "s_per_face": round(wall / faces, 3),
                      "cpu_s_per_face": round(cpu / faces, 3)}), flush=True)
    faces, wall, cpu = _cloak(engine, _items(people, new), book)
    print(json.dumps({"scope": scope, "phase": "new photos" + (
        " (saved person cloak)" if scope == "person" else " (search per photo)"),
        "preset": args.preset, "faces": faces, "s_per_face": round(wall / faces, 3),
        "cpu_s_per_face": round(cpu / faces, 3)}), flush=True)


if __name__ == "__main__":
  main()
