"""Helpers shared by the bench modules."""
import contextlib
import os

from common.paths import set_root
from common.machine import machine_info  # noqa: F401  (re-exported for the benches)


@contextlib.contextmanager
def quiet_in(folder):
    """Stages called in process use `folder` as the project root (data/ and out/ there); progress bars and
    prints off for clean timings."""
    set_root(folder)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            yield
    finally:
        os.environ.pop("TQDM_DISABLE", None)
        set_root(None)


def machine_note(info=None):
    info = info or machine_info()
    flags = ", ".join(f"{f}={'yes' if v else 'no'}" for f, v in info["flags"].items())
    return f"{info['cpu']}, {info['cores']} cores, {flags}, load {'/'.join(map(str, info['load_avg']))}"


def ratio_stats(ratios):
    """min / median / max of per-pair ratios (interleaved A/B pairs), and a note string."""
    import statistics
    ratios = [float(r) for r in ratios]
    stats = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios), "n": len(ratios)}
    return stats, f"pairs {len(ratios)}: min {stats['min']:.2f}, median {stats['median']:.2f}, max {stats['max']:.2f}"
