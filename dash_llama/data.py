"""Data access for the dashboard: discover runs and experiments under --out, validate names coming from the
browser, and read every artifact through the project's shared readers, cached until its files change.

Pages never touch paths themselves: they ask the Store, which raises Missing (a message meant for the page)
when a stage has not been run yet, and UnknownName when a name from the browser is not a run or experiment
under --out (so `../../etc` can never become a path)."""
import hashlib
import html
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError
from common.paths import tok_dir

# folders inside a run that never hold runs themselves (keeps discovery cheap while a run is training)
SKIP_DIRS = {"ckpt", "tables", "visualize", "figures", "bench", "__pycache__"}
DURABILITY = Path("experiments") / "durability"
RUN_FILES = ("config.json", "train_log.csv", "val_log.csv", "batch_log.json", "batch_log.bin", "attn_probes.json")


class Missing(Exception):
    """An artifact a page needs does not exist yet; the message says which stage makes it."""


class NoRun(Missing):
    """No run is selected (none under --out yet, or the URL named one that was refused): the header says why,
    so the panels stay quiet instead of each repeating it."""


class UnknownName(Exception):
    """A run or experiment name from the browser that is not one under --out."""


def _signature(*paths):
    """(mtime, size) of each path, or None when absent; a changed signature invalidates a cache entry."""
    sig = []
    for p in paths:
        try:
            st = os.stat(p)
            sig.append((st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append(None)
    return tuple(sig)


class Store:
    """Everything the pages read, for one --out folder. Thread-safe (Dash serves callbacks from threads)."""

    def __init__(self, out_dir, max_checkpoints_cached=8):
        self.out_dir = Path(out_dir)
        self._cache = {}                       # key -> (signature, value)
        self._ckpts = OrderedDict()            # (run, step) -> checkpoint dict, LRU
        self._max_ckpts = max_checkpoints_cached
        self._lock = threading.RLock()

    # ---- caching ---------------------------------------------------------------------------------------
    def _cached(self, key, sig, load):
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == sig:
                return hit[1]
        value = load()
        with self._lock:
            self._cache[key] = (sig, value)
        return value

    # ---- discovery and name validation -----------------------------------------------------------------
    def runs(self):
        """Names (paths relative to --out, '/'-separated) of every folder holding a config.json."""
        found = []
        if not self.out_dir.is_dir():
            return found
        for root, dirs, files in os.walk(self.out_dir):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            if "config.json" in files:
                found.append(Path(root).relative_to(self.out_dir).as_posix())
        return sorted(found, key=lambda n: (n.count("/"), n))

    def version(self):
        """A short hash of the (mtime, size) of every file the pages read, for every run and experiment: the
        periodic refresh redraws only when it changes, so an idle dashboard leaves the user's view alone."""
        sig = []
        for name in self.runs():
            d = self.out_dir / name
            files = [d / f for f in RUN_FILES]
            for sub in ("tables", "ckpt"):
                if (d / sub).is_dir():
                    files += sorted((d / sub).iterdir())
            sig.append((name, _signature(*files)))
        for name in self.experiments():
            d = self.out_dir / DURABILITY / name
            sig.append((name, _signature(*sorted(p for p in d.iterdir() if p.is_file()))))
        return hashlib.sha1(repr(sig).encode()).hexdigest()[:16]

    def experiments(self):
        """Names of durability experiments: folders under out/experiments/durability/."""
        root = self.out_dir / DURABILITY
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def run_dir(self, name):
        """The folder of run `name`, only if `name` is exactly one of the discovered runs."""
        if name is None or name == "":
            raise NoRun(f"no run selected — none found under {self.out_dir} yet; train one with "
                          f"`python modelling/train.py --out_dir={self.out_dir.as_posix()}/NAME`")
        if not isinstance(name, str) or name not in self.runs():
            raise UnknownName(f"unknown run {name!r}: pick one of the runs found under {self.out_dir}")
        path = (self.out_dir / name).resolve()
        if not path.is_relative_to(self.out_dir.resolve()):  # belt and braces: symlinks out of --out
            raise UnknownName(f"run {name!r} lies outside {self.out_dir}")
        return path

    def experiment_dir(self, name):
        if not isinstance(name, str) or name not in self.experiments():
            raise UnknownName(f"unknown experiment {name!r}: pick one under {self.out_dir / DURABILITY}")
        return (self.out_dir / DURABILITY / name).resolve()

    # ---- a run -----------------------------------------------------------------------------------------
    def run(self, name):
        """The shared reader's Run (config, probes, train_log, val_log, checkpoints, batch_log), refreshed
        whenever training appends to the logs or writes a checkpoint."""
        from modelling.checkpoints import load_run
        d = self.run_dir(name)
        sig = _signature(*(d / f for f in RUN_FILES), d / "batch_log_steps.bin", d / "ckpt")

        def load():
            try:
                return load_run(d)
            except UserError as e:
                raise Missing(str(e)) from None
        return self._cached(("run", name), sig, load)

    def config(self, name):
        """The run's settings, flat: train.py's constants (config.json's "config") plus n_params, n_steps, …"""
        raw = self.run(name).config
        extra = {k: v for k, v in raw.items() if k not in ("config", "provenance") and not isinstance(v, (dict, list))}
        return {**extra, **raw.get("config", {})}

    def checkpoint_steps(self, name):
        return [int(step) for step, _ in self.run(name).checkpoints]

    def checkpoint(self, name, step):
        """One checkpoint dict (weights, probe_attn, …) through the shared reader; a few kept in memory."""
        from modelling.checkpoints import load_checkpoint
        paths = dict(self.run(name).checkpoints)
        if step not in paths:
            raise Missing(f"run {name} has no checkpoint at step {step}")
        key = (name, int(step), _signature(paths[step]))
        with self._lock:
            if key in self._ckpts:
                self._ckpts.move_to_end(key)
                return self._ckpts[key]
        ckpt = load_checkpoint(paths[step])
        with self._lock:
            self._ckpts[key] = ckpt
            while len(self._ckpts) > self._max_ckpts:
                self._ckpts.popitem(last=False)
        return ckpt

    def batch_log(self, name):
        log = self.run(name).batch_log
        if log is None or len(log) == 0:
            raise Missing(f"{name} has no batch log yet — it is written by modelling/train.py as it trains")
        return log

    def table(self, name, table):
        """out/RUN/tables/<table>.csv as a DataFrame; Missing names the stage that writes it."""
        run_dir = self.run_dir(name)
        path = run_dir / "tables" / f"{table}.csv"
        if table == "summary":  # it has a reader of its own (sorted by step, checked)
            from measures.saturation import load_summary
            if not path.exists():
                raise Missing(f"{name}/tables/summary.csv not found yet — run "
                              f"`python eval.py --out_dir {self.out_dir.as_posix()}/{name}`")

            def load():
                try:
                    return load_summary(run_dir)
                except UserError as e:
                    raise Missing(str(e)) from None
            return self._cached(("summary", str(path)), _signature(path), load)
        return self._csv(path, f"{name}/tables/{table}.csv", TABLE_MAKERS.get(table, "the eval stages"), name)

    def table_json(self, name, table):
        """out/RUN/tables/<table>.json as a dict ({} when absent or unreadable: these only add labels)."""
        import json
        path = self.run_dir(name) / "tables" / f"{table}.json"

        def load():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
        return self._cached(("json", str(path)), _signature(path), load)

    def _csv(self, path, label, maker, run=None):
        sig = _signature(path)
        cmd = maker.format(run=f"{self.out_dir.as_posix()}/{run}") if run else maker
        if sig[0] is None:
            raise Missing(f"{label} not found yet — run `{cmd}`")

        def load():
            try:
                return pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise Missing(f"{label} is unreadable ({type(e).__name__}) — re-run `{cmd}`") from None
        return self._cached(("csv", str(path)), sig, load)

    # ---- silent damage ---------------------------------------------------------------------------------
    def health(self, name):
        """Warnings for damage a figure would otherwise hide: each artifact checked against what config.json and
        the run's own logs say it should hold. Each warning names the file, what is wrong, what the pages
        show because of it, and the command that rebuilds it. [] for a healthy run."""
        run = self.run(name)
        d = self.run_dir(name)
        out = f"{self.out_dir.as_posix()}/{name}"
        retrain = "only re-training the run (settings in its config.json) rewrites it"
        present = [int(s) for s, _ in run.checkpoints]
        last_ckpt = max(present, default=0)
        log = run.train_log
        last_logged = int(log["step"].max()) if not log.empty and "step" in log.columns else 0
        warnings = []
        if last_logged < last_ckpt:
            warnings.append(f"{name}/train_log.csv ends at step {last_logged} but the checkpoints go to step "
                            f"{last_ckpt}: the log was cut, so loss curves and progress stop at step {last_logged} "
                            f"— {retrain}")
        trained_to = max(last_logged, last_ckpt)
        scheduled = [int(s) for s in run.config.get("checkpoint_steps") or []]
        # a checkpoint the schedule wanted at a step the run has passed (the newest may still be being written)
        lost = [s for s in scheduled if s not in present and (s < trained_to or s <= last_ckpt)]
        if lost:
            shown = ", ".join(f"step {s}" for s in lost[:6]) + (" …" if len(lost) > 6 else "")
            warnings.append(f"{name}/ckpt/ lacks {len(lost)} checkpoint(s) that config.json schedules and the run "
                            f"trained past ({shown}): sliders skip those steps — {retrain}")
        if run.batch_log is not None and len(run.batch_log) < last_ckpt:  # durable at every checkpoint
            warnings.append(f"{name}/batch_log.bin holds steps 1..{len(run.batch_log)} but the run has checkpoints "
                            f"to step {last_ckpt}: the file was cut, so batch composition and the batch viewer stop "
                            f"at step {len(run.batch_log)} — {retrain}")
        warnings += self._table_health(name, d, out)
        return warnings

    def _table_health(self, name, d, out):
        """summary.csv against eval.json's evaluated steps; plateau and attention tables against their inputs."""
        import json
        tables, warnings = d / "tables", []
        summary_path, state_path = tables / "summary.csv", tables / "eval.json"
        if summary_path.exists() and state_path.exists():
            try:
                evaluated = {int(s) for s in json.loads(state_path.read_text()).get("steps_done", [])}
                summary_steps = set(pd.read_csv(summary_path, usecols=["step"], on_bad_lines="skip")["step"]
                                    .dropna().astype(int))
            except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
                evaluated, summary_steps = set(), set()
                warnings.append(f"{name}/tables/summary.csv or eval.json is unreadable — rebuild both with "
                                f"`python eval.py --out_dir {out} --rebuild`")
            lacking = sorted(evaluated - summary_steps)
            if lacking:
                shown = ", ".join(map(str, lacking[:6])) + (" …" if len(lacking) > 6 else "")
                warnings.append(f"{name}/tables/summary.csv lacks {len(lacking)} of the {len(evaluated)} steps "
                                f"tables/eval.json lists as evaluated (steps {shown}): the file was cut, so curves "
                                f"miss those points — rebuild it with `python eval.py --out_dir {out} --rebuild`")
        sat_path = tables / "saturation.csv"
        if sat_path.exists() and summary_path.exists() and sat_path.stat().st_mtime < summary_path.stat().st_mtime:
            warnings.append(f"{name}/tables/saturation.csv is older than summary.csv: its plateau marks may be "
                            f"stale — rebuild it with `python visualize_sat_curves.py --out_dir {out}`")
        if (tables / "attn_stats.csv").exists():
            try:
                covered = set(self.table(name, "attn_stats")["step"].astype(int))
            except (Missing, KeyError, ValueError):
                covered = None
            new = sorted({int(s) for s, _ in self.run(name).checkpoints} - covered) if covered is not None else []
            if new:
                warnings.append(f"{name}/tables/attn_stats.csv has no rows for checkpoint step(s) "
                                f"{', '.join(map(str, new[:6]))}{' …' if len(new) > 6 else ''}: the per-head "
                                f"statistics stop before them — rebuild it with `python visualize_attn.py "
                                f"--out_dir {out}`")
        return warnings

    # ---- dataset side ----------------------------------------------------------------------------------
    def dataset(self, name):
        """The run's TokenizedDataset (text of stories, tokenizer) via the shared reader."""
        from tokenization.dataset import TokenizedDataset
        cfg = self.config(name)
        dataset, vocab = cfg.get("dataset"), cfg.get("vocab_size")
        d = tok_dir(dataset, vocab)
        sig = _signature(d / "manifest.json", d / "index.parquet")

        def load():
            try:
                return TokenizedDataset(dataset, vocab)
            except UserError as e:
                raise Missing(str(e)) from None
        return self._cached(("dataset", dataset, vocab), sig, load)

    def metadata(self, name):
        """metadata.parquet of the run's dataset (indexed by story_id, one column per metric), via the
        sampler's shared reader."""
        from metadata.table import metadata_path
        from modelling.samplers import load_metadata
        cfg = self.config(name)
        dataset, vocab = cfg.get("dataset"), cfg.get("vocab_size")
        path = metadata_path(dataset, vocab)

        def load():
            try:
                return load_metadata(dataset, vocab)
            except UserError as e:
                raise Missing(str(e)) from None
        return self._cached(("metadata", str(path)), _signature(path), load)

    def token_labels(self, name, tokens):
        """Readable pieces for token ids (the run's tokenizer), or the ids when the dataset is not here; escaped
        for plotly's HTML-ish labels (so '<s>' is shown, not taken as strike-through)."""
        try:
            sp = self.dataset(name).tokenizer
            return [html.escape(sp.id_to_piece(int(t))) for t in tokens]
        except (Missing, AttributeError, IndexError):
            return [str(int(t)) for t in tokens]

    # ---- experiments -----------------------------------------------------------------------------------
    def experiment_file(self, name, filename):
        path = self.experiment_dir(name) / filename
        if not path.exists():
            raise Missing(f"experiments/durability/{name}/{filename} not found yet — run or resume "
                          f"`python experiments/durability/experiment_durability.py` for {name}")
        return path

    def experiment_table(self, name, table):
        """results.csv, curves.csv, runs.csv or divergence.csv of a durability experiment."""
        path = self.experiment_file(name, f"{table}.csv")
        return self._csv(path, f"experiments/durability/{name}/{table}.csv",
                         "python experiments/durability/experiment_durability.py")

    def experiment_runs(self, name):
        """Run names (as in runs()) of the experiment's condition × seed folders."""
        prefix = f"{DURABILITY.as_posix()}/{name}/runs/"
        return [r for r in self.runs() if r.startswith(prefix)]


TABLE_MAKERS = {
    "generations": "python eval.py --out_dir {run}",
    "probes": "python eval.py --out_dir {run}",
    "summary": "python eval.py --out_dir {run}",
    "saturation": "python visualize_sat_curves.py --out_dir {run}",
    "attn_stats": "python visualize_attn.py --out_dir {run}",
    "embd_pca": "python visualize_embd.py --out_dir {run}",
}


def downsample_rows(frame, max_rows, seed=0):
    """At most max_rows rows, evenly strided (keeps order and the last row); returns (frame, note or '')."""
    n = len(frame)
    if n <= max_rows:
        return frame, ""
    keep = np.unique(np.linspace(0, n - 1, max_rows).round().astype(int))
    return frame.iloc[keep], f"showing {len(keep):,} of {n:,} points (evenly strided) to keep the page fast"
