"""`make bench`: run every bench/bench_*.py, print one table, write out/bench/results.json and results.md (+ one
JSON per bench), with the CPU flags and load average at start and end.

    make bench                         # every bench, full size (a quiet machine: tens of minutes)
    make bench QUICK=1                 # small sizes, without the scale row (a few minutes on a quiet machine)
    make bench QUICK=1 BENCHES="train generate"      # only the benches whose names contain these words

Each bench module defines run(quick=False) -> list of rows {bench, metric, value, unit, note}. Figures are
measured side by side inside each module, since this machine is shared and noisy."""
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.util import machine_info, machine_note  # noqa: E402
from common.io import atomic_write_json, provenance  # noqa: E402

OUT = Path("out/bench")
SLOW = ("bench_scale",)  # whole-pipeline runs: left out of a quick run unless named


def main():
    quick = "--quick" in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    names = [n for n in names if not only or any(o in n for o in only)]
    if quick and not only:
        names = [n for n in names if n not in SLOW]  # run them by name: make bench QUICK=1 BENCHES=scale
    all_rows, failed = [], []
    start = machine_info()
    print(f"machine at start: {machine_note(start)}", flush=True)
    for name in names:
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            rows = importlib.import_module(f"bench.{name}").run(quick=quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        atomic_write_json(OUT / f"{name}.json", {"provenance": provenance(), "rows": rows,
                                                 "seconds": round(time.time() - t0, 1)})
        all_rows += rows
    end = machine_info()
    atomic_write_json(OUT / "results.json", {"provenance": provenance(), "quick": quick, "machine_start": start,
                                             "machine_end": end, "rows": all_rows})
    width = max([len(f"{r['bench']}  {r['metric']}") for r in all_rows] + [10])
    print(f"\n{'bench  metric':<{width}}  {'value':>12}  unit        note")
    for r in all_rows:
        print(f"{r['bench'] + '  ' + r['metric']:<{width}}  {r['value']:>12.4g}  {r['unit']:<10}  {r.get('note', '')}")
    print(f"\nmachine at start: {machine_note(start)}\nmachine at end:   {machine_note(end)}")
    write_table(all_rows, start, end, quick)
    print(f"wrote {OUT}/results.json and {OUT}/results.md")
    if failed:
        print(f"error: benches failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def write_table(rows, start, end, quick):
    """out/bench/results.md: the same table as Markdown, with the machine and load it ran under."""
    lines = [f"`make bench{' QUICK=1' if quick else ''}` — {machine_note(start)} (start); load at end "
             f"{'/'.join(map(str, end['load_avg']))}", "", "| bench | metric | value | unit | note |",
             "|---|---|---:|---|---|"]
    lines += [f"| {r['bench']} | {r['metric']} | {r['value']:.4g} | {r['unit']} | {r.get('note', '')} |" for r in rows]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
