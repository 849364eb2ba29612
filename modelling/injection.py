"""Injection schedule: chosen segments ADDED to chosen optimizer steps (issue 18).

A plan (JSON, `--inject_plan=PATH` of modelling/train.py) lists injections {"step": k, "fact_id", "direction",
"phrasing"} — a fact document of the dataset's fact set (download/fact_set.py) — or {"step": k, "story_id": i}
for any story. Step k then holds the sampler's S segments, packed exactly as without the plan, plus the injected
segments: each goes first-fit into a row with room (rows in order), else into a new row at the end. So every
other segment sits in the same step and the same row as in the run without the plan — that run is the control —
and the batch log records the injected segments like any other. The plan is a pure function of the step, so a
resumed run injects exactly the same (the plan's sha256 is checked on resume).

    plan = InjectionPlan.load(path, ds, max_seq_len)
    packed = plan.add(packed, step)          # the step's packed segments plus its injections
    spread_steps(first, last, k)             # k steps spread evenly over a window (the runner's helper)
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from common.errors import UserError
from modelling.data import SEGMENT_DTYPE, story_segments

PLAN_FORMAT = 1


def spread_steps(first, last, k):
    """k steps spread evenly over [first, last] (k = 1: the window's middle), increasing, repeats allowed when
    the window is shorter than k."""
    if k < 1:
        return []
    if k == 1:
        return [int(round((first + last) / 2))]
    return [int(round(x)) for x in np.linspace(first, last, k)]


def add_to_rows(packed, extra, max_seq_len, pack=True):
    """packed (rows set) plus `extra` segments: each extra goes into the first row with room, else a new row
    (pack=False: always a new row, as train.py --pack=False lays out one segment per row). The result is
    grouped by row in row order; every original segment keeps its row and its place in it."""
    packed = np.asarray(packed, dtype=SEGMENT_DTYPE)
    n_rows = int(packed["row"].max()) + 1 if len(packed) else 0
    room = np.full(n_rows, int(max_seq_len), dtype=np.int64)
    np.subtract.at(room, packed["row"], packed["n_tokens"])
    room = room.tolist()
    placed = np.asarray(extra, dtype=SEGMENT_DTYPE).copy()
    for seg in placed:
        n = int(seg["n_tokens"])
        row = next((r for r, free in enumerate(room) if n <= free), None) if pack else None
        if row is None:
            row = len(room)
            room.append(int(max_seq_len))
        room[row] -= n
        seg["row"] = row
    both = np.concatenate([packed, placed])
    return both[np.argsort(both["row"], kind="stable")]


class InjectionPlan:
    """A resolved plan: step -> the segments it adds (SEGMENT_DTYPE, row unset)."""

    def __init__(self, plan, ds, max_seq_len, source="plan"):
        if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or \
                not isinstance(plan.get("injections"), list):
            raise UserError(f"{source} is not an injection plan of format {PLAN_FORMAT} ({{'format': 1, "
                            f"'injections': [...]}}) — write it with experiments/fact_injection or by hand")
        self.plan = plan
        self.max_seq_len = int(max_seq_len)
        self.sha256 = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
        doc_ids = None
        by_step = {}
        for n, item in enumerate(plan["injections"]):
            step = item.get("step") if isinstance(item, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or step < 1:
                raise UserError(f"{source} injection {n} ({item!r}) has no step >= 1 — give the optimizer step "
                                f"(1-based) it is added to")
            if "story_id" in item:
                story_id = int(item["story_id"])
                if not 0 <= story_id < len(ds):
                    raise UserError(f"{source} injection {n}: story_id {story_id} is not in {ds.dir} "
                                    f"(0..{len(ds) - 1})")
            else:
                if doc_ids is None:
                    from download.fact_set import document_ids, load_fact_set
                    doc_ids = document_ids(ds, load_fact_set(ds.dataset)["facts"])
                key = (item.get("fact_id"), item.get("direction", "forward"), int(item.get("phrasing", 0)))
                if key not in doc_ids:
                    raise UserError(f"{source} injection {n}: no fact document {key} in {ds.dataset}'s fact set — "
                                    f"use a fact_id of facts.json, direction forward|reverse and a trained "
                                    f"phrasing index")
                story_id = doc_ids[key]
            by_step.setdefault(step, []).append(story_id)
        self.steps = {}
        for step, story_ids in sorted(by_step.items()):
            self.steps[step] = story_segments(story_ids, ds.n_tokens(story_ids), self.max_seq_len)

    @classmethod
    def load(cls, path, ds, max_seq_len):
        path = Path(path)
        if not path.exists():
            raise UserError(f"--inject_plan={path}: file not found — give an injection plan .json")
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise UserError(f"--inject_plan={path} is not valid JSON ({e}) — fix or rewrite it") from None
        return cls(plan, ds, max_seq_len, source=f"--inject_plan={path}")

    def segments(self, step):
        """Segments injected at `step` (an empty array for most steps)."""
        return self.steps.get(int(step), np.zeros(0, dtype=SEGMENT_DTYPE))

    def add(self, packed, step, pack=True):
        """The step's packed segments plus its injections (packed itself when the step has none)."""
        extra = self.segments(step)
        return add_to_rows(packed, extra, self.max_seq_len, pack) if len(extra) else packed

    def n_after(self, n_steps):
        """Injections planned after step n_steps (a run that stops there, unless resumed further, skips them)."""
        return sum(len(s) for k, s in self.steps.items() if k > n_steps)

    def summary(self):
        """What config.json records about the plan."""
        n = sum(len(s) for s in self.steps.values())
        return {"sha256": self.sha256, "n_injections": len(self.plan["injections"]), "n_segments": n,
                "n_tokens": int(sum(int(s["n_tokens"].sum()) for s in self.steps.values())),
                "n_steps_touched": len(self.steps)}
