"""`make bench`: run every bench/bench_*.py, print one table, write out/bench/results.json (+ one JSON per bench).

Each bench module defines run(quick=False) -> list of rows {bench, metric, value, unit, note}. Figures are
measured side by side inside each module, since this machine is shared and noisy."""
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.io import atomic_write_json, provenance  # noqa: E402

OUT = Path("out/bench")


def main():
    quick = "--quick" in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    names = [n for n in names if not only or any(o in n for o in only)]
    all_rows, failed = [], []
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
    atomic_write_json(OUT / "results.json", {"provenance": provenance(), "rows": all_rows})
    width = max([len(f"{r['bench']}  {r['metric']}") for r in all_rows] + [10])
    print(f"\n{'bench  metric':<{width}}  {'value':>12}  unit        note")
    for r in all_rows:
        print(f"{r['bench'] + '  ' + r['metric']:<{width}}  {r['value']:>12.4g}  {r['unit']:<10}  {r.get('note', '')}")
    print(f"\nwrote {OUT}/results.json")
    if failed:
        print(f"error: benches failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
