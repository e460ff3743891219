"""One frontier report from several `jaxcloak eval --experiments frontier` runs.

Runs made on the same DATA, pool, users and seed (so the same splits and the
same no-cloak trackers) but with other `--family` flags, possibly on other
days, are merged into one table and one plot, a curve per family:

    python benchmarks/frontier_report.py reports/frontier-1 reports/frontier-2 \
        -o docs/eval/frontier-2026-12-07

Refuses runs whose users differ. Prints one JSON line per (family, point).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxcloak.eval import report, report_rows


def load(run: Path) -> tuple[dict, list[dict]]:
  lines = [json.loads(l) for l in (run / "results.jsonl").read_text().splitlines()]
  return lines[0], lines[1:]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("runs", nargs="+", type=Path, help="eval report folders (results.jsonl)")
  ap.add_argument("-o", "--output", type=Path, required=True)
  args = ap.parse_args(argv)
  infos, records, seen = [], [], set()
  for run in args.runs:
    info, recs = load(run)
    infos.append(info)
    for r in recs:
      if r.get("experiment") == "frontier":
        key = (r["family"], r["point"], r["user"], r["tracker"], r["kind"])
      elif r.get("experiment") == "quality" and r.get("for") == "frontier":
        key = ("quality", r["family"], r["point"])
      else:
        continue
      if key not in seen:  # the no-cloak rows of every run are the same trackers
        seen.add(key)
        records.append(r)
  if len({tuple(i["users"]) for i in infos}) != 1:
    print("error: the runs protect different users; merge only runs of one setup",
          file=sys.stderr)
    return 2
  info = dict(infos[0], merged=[str(r) for r in args.runs],
              seconds=sum(i.get("seconds", 0) for i in infos))
  report.write(args.output, records, info, infos[0]["settings"],
               command="python benchmarks/frontier_report.py " + " ".join(map(str, args.runs)))
  for row in report_rows.frontier_points(records):
    q = row["quality"]
    print(json.dumps({"family": row["family"], "point": row["point"],
                      **{k: v for k, v in row.items() if k.startswith(("held-out", "white-box"))},
                      "gap_closed": row["gap_closed"],
                      "ssimulacra2_median": q.get("ssimulacra2_median"),
                      "ssimulacra2_min": q.get("ssimulacra2_min"),
                      "dssim_mean": q.get("dssim_mean"),
                      "seconds_per_photo": q.get("seconds_per_photo")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
