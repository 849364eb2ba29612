"""--sampler=dynamic: the next steps' segments are drawn with probabilities from the current model's scores.

Same selection and segments as modelling/samplers.py (so `n_stories`, `selection_seed` and the epoch length are
those of the random sampler); only the order inside each epoch is decided while training. Every
`dynamic_interval` steps (at within-epoch step 0, I, 2I, …) one decision covers the next block of I steps,
K = I * S segments (fewer at the end of an epoch):

  1. pool   min(dynamic_pool * K, remaining) segments drawn uniformly from the epoch's not-yet-trained segments
  2. score  each pool segment with the model as it is now (eval mode, no gradients), `dynamic_score`:
              reducible_loss  mean per-target loss of the segment minus the reference loss of its story,
                              log ppl_ref (the n-gram's mean per-token loss, metadata column ppl_ref) —
                              RHO-LOSS's "reducible holdout loss" (Mindermann et al. 2022) with the n-gram as
                              the reference model
              loss            the mean per-target loss alone
              constant        0 for every segment (a null control: then the draws are uniformly random)
              metadata:COL    the story's value of a numeric metadata column (metadata:-COL prefers low values)
  3. draw   K of the pool without replacement, probability ∝ exp(score / dynamic_temperature) at every draw
            (Plackett-Luce, sampled exactly as the top K of score / T + Gumbel noise); a NaN score is never
            preferred (drawn last). The draws in draw order fill the block's steps, S per step.
Drawn segments leave the epoch's remaining set, so every segment is trained exactly once per epoch: at a whole
number of epochs a dynamic run trains the same multiset of segments as a random run, in another order.

The decision log out_dir/dynamic_log.jsonl holds one JSON line per decision (fsynced when written): step,
epoch, block steps, the pool (story_id, start, n_tokens), scores, probabilities (the first draw's softmax),
draws (pool positions in draw order), and the numpy RNG state before and after. The batch log stays the one
record of what was trained; this log says why. Resuming at step c (init_from=resume) drops the decisions of
later steps and rebuilds the sampler state from the kept ones, so a resumed run draws exactly what the
uninterrupted run drew (the model, optimizer and torch RNG are restored from resume.pt, so its scores match).
"""
import json
import math
import os
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import atomic_path
from modelling.data import segment_losses
from modelling.samplers import SegmentSampler, column_values

LOG_NAME = "dynamic_log.jsonl"
SCORES = ("reducible_loss", "loss", "constant")  # and metadata:COLUMN / metadata:-COLUMN
METADATA_PREFIX = "metadata:"
RNG_TAG = 7  # the dynamic sampler's generator is default_rng([data_seed, RNG_TAG]); epochs use tags 1, 2, …
SCORE_ROWS = 16  # packed rows per forward pass when scoring a pool


def check_score(score, metadata):
    """UserError unless score is a known kind (metadata ones need a numeric column)."""
    if score in SCORES:
        return
    if score.startswith(METADATA_PREFIX):
        column = score[len(METADATA_PREFIX):].lstrip("-")
        if metadata is None:
            raise UserError(f"--dynamic_score={score} needs the metadata table — run metadata/batch_metadata.py "
                            f"compute_metadata first")
        column_values(metadata, column, metadata.index[:1], "dynamic_score")
        return
    raise UserError(f"--dynamic_score={score!r}: use one of {', '.join(SCORES)} or metadata:COLUMN "
                    f"(metadata:-COLUMN prefers low values)")


def draw_order(scores, temperature, rng):
    """Indices of all candidates in a Plackett-Luce order with weights exp(score / T): argsort of
    score / T + Gumbel noise, descending (the Gumbel-top-k trick). NaN scores go last, in random order."""
    keys = np.asarray(scores, dtype=np.float64) / float(temperature)
    noise = rng.gumbel(size=len(keys))
    keys = np.where(np.isnan(keys), -np.inf, keys)
    # NaN-scored candidates: after every finite one, ordered among themselves by their noise
    return np.lexsort((-noise, -(keys + noise), np.isinf(keys) & (keys < 0)))


def softmax(scores, temperature):
    """The first draw's probabilities exp(score / T) / sum (NaN scores: 0; all NaN: uniform)."""
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    finite = np.isfinite(z)
    if not finite.any():
        return np.full(len(z), 1.0 / max(1, len(z)))
    w = np.where(finite, np.exp(z - np.max(z[finite])), 0.0)
    return w / w.sum()


def _jsonable(values):
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


def read_decisions(run_dir):
    """The decisions of a dynamic run (list of dicts, in order); a torn last line is ignored."""
    path = Path(run_dir) / LOG_NAME
    if not path.exists():
        raise UserError(f"{path} not found — it is written by modelling/train.py --sampler=dynamic")
    decisions = []
    for line in path.read_text().splitlines():
        try:
            decisions.append(json.loads(line))
        except ValueError:
            break  # a line torn by a kill: nothing after it was written either
    return decisions


def decision_segments(decision):
    """(story_id, start, n_tokens) of a decision's draws, in draw order (int64 array of shape [K, 3])."""
    pool = np.array([decision["pool"][k] for k in ("story_id", "start", "n_tokens")], dtype=np.int64).T
    return pool[np.asarray(decision["draws"], dtype=np.int64)]


class DynamicSampler(SegmentSampler):
    """step_segments(k) for k = 1, 2, … in order (a decision needs the model after step k - 1). attach() gives
    it the model before the first step; resuming rebuilds its state from the decision log."""

    def __init__(self, train_ids, n_tokens_of, max_seq_len, segments_per_step, data_seed=0, metadata=None,
                 n_stories=0, selection_seed=0, interval=10, pool=4, score="reducible_loss", temperature=0.1):
        super().__init__(train_ids, n_tokens_of, max_seq_len, segments_per_step, "random", data_seed,
                         n_stories=n_stories, selection_seed=selection_seed)
        self.sampler = "dynamic"
        if int(interval) < 1 or int(pool) < 1 or not float(temperature) > 0:
            raise UserError(f"dynamic sampler: dynamic_interval={interval} and dynamic_pool={pool} must be >= 1 and "
                            f"dynamic_temperature={temperature} > 0")
        check_score(score, metadata)
        self.interval, self.pool_factor = int(interval), int(pool)
        self.score, self.temperature = score, float(temperature)
        story_of_segment = np.searchsorted(self.selection, self.segments["story_id"])
        self.story_value = None  # per segment: log ppl_ref (reducible_loss) or the metadata column
        if score == "reducible_loss":
            if metadata is None or "ppl_ref" not in metadata.columns:
                raise UserError("--dynamic_score=reducible_loss needs the metadata column ppl_ref — run "
                                "metadata/batch_metadata.py compute_metadata first")
            self.story_value = np.log(column_values(metadata, "ppl_ref", self.selection, "ppl_ref"))[story_of_segment]
        elif score.startswith(METADATA_PREFIX):
            column = score[len(METADATA_PREFIX):]
            sign = -1.0 if column.startswith("-") else 1.0
            self.story_value = sign * column_values(metadata, column.lstrip("-"), self.selection,
                                                    "dynamic_score")[story_of_segment]
        self.rng = np.random.default_rng([self.data_seed, RNG_TAG])
        self.model_losses = None  # segment indices -> mean per-target loss, set by attach()
        self.log_path, self.log = None, None
        self.n_decisions = 0
        self._epoch, self._remaining = None, None  # epoch whose remaining set is held; bool per segment
        self._block = None  # (first within-epoch step index, segment indices in draw order)

    # ---- scoring ----

    def attach(self, model, batches, ctx, device, out_dir=None, resume_step=0):
        """Score with `model` from now on; log decisions to out_dir/dynamic_log.jsonl (None: no log). With
        resume_step > 0, rebuild the state after that step from the log and drop later decisions."""
        def model_losses(indices):
            segs = self.segments[indices]
            was_training = model.training
            model.eval()  # no dropout: a score is a function of the weights alone
            nll = segment_losses(model, batches, segs, SCORE_ROWS, ctx, device)
            model.train(was_training)
            return nll / segs["n_tokens"]
        self.model_losses = model_losses
        if out_dir is not None:
            self.log_path = Path(out_dir) / LOG_NAME
            if resume_step:
                self._resume(int(resume_step))
            elif self.log_path.exists():
                self.log_path.unlink()
            self.log = open(self.log_path, "a")
        return self

    def scores(self, indices):
        """Scores of the pool's segments (float64; NaN where the story has no value)."""
        if self.score == "constant":
            return np.zeros(len(indices))
        if self.score.startswith(METADATA_PREFIX):
            return self.story_value[indices].astype(np.float64)
        if self.model_losses is None:
            raise RuntimeError("DynamicSampler.attach(model, …) must be called before the first step")
        losses = np.asarray(self.model_losses(indices), dtype=np.float64)
        return losses - self.story_value[indices] if self.score == "reducible_loss" else losses

    # ---- decisions ----

    def _start_epoch(self, epoch):
        self._epoch, self._remaining, self._block = epoch, np.ones(len(self.segments), dtype=bool), None

    def _decide(self, step, epoch, i):
        """The decision for the block starting at global step `step` (within-epoch index i)."""
        n_steps = min(self.interval, self.steps_per_epoch - i)
        remaining = np.flatnonzero(self._remaining)
        k = min(n_steps * self.segments_per_step, len(remaining))
        rng_before = self.rng.bit_generator.state
        pool = np.sort(self.rng.choice(remaining, size=min(len(remaining), self.pool_factor * k), replace=False))
        scores = self.scores(pool)
        draws = draw_order(scores, self.temperature, self.rng)[:k]
        chosen = pool[draws]
        self._remaining[chosen] = False
        self._block = (i, chosen)
        if self.log is not None:
            seg = self.segments[pool]
            record = {"decision": self.n_decisions, "step": int(step), "epoch": int(epoch), "n_steps": int(n_steps),
                      "n_remaining": int(len(remaining)), "score": self.score, "temperature": self.temperature,
                      "pool": {"story_id": seg["story_id"].tolist(), "start": seg["start"].tolist(),
                               "n_tokens": seg["n_tokens"].tolist()},
                      "scores": _jsonable(scores), "probabilities": _jsonable(softmax(scores, self.temperature)),
                      "draws": draws.tolist(), "rng_state_before": rng_before,
                      "rng_state_after": self.rng.bit_generator.state}
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
            os.fsync(self.log.fileno())  # a decision is durable before the step that uses it trains
        self.n_decisions += 1

    def step_segments(self, step):
        epoch, i = divmod(int(step) - 1, self.steps_per_epoch)
        if epoch != self._epoch:
            self._start_epoch(epoch)
        if i % self.interval == 0 and (self._block is None or self._block[0] != i):
            self._decide(step, epoch, i)
        first, chosen = self._block
        if not first <= i < first + self.interval:
            raise RuntimeError(f"dynamic sampler: step {step} asked out of order (block starts at {first})")
        s = self.segments_per_step
        return self.segments[chosen[(i - first) * s:(i - first + 1) * s]]

    # ---- resume ----

    def _resume(self, step):
        """State after global step `step` from the logged decisions; later ones are dropped from the log."""
        kept = [d for d in read_decisions(self.log_path.parent) if d["step"] <= step]
        with atomic_path(self.log_path) as tmp:
            Path(tmp).write_text("".join(json.dumps(d) + "\n" for d in kept))
        self.n_decisions = len(kept)
        key_of = {(int(a), int(b)): n for n, (a, b) in enumerate(zip(self.segments["story_id"].tolist(),
                                                                   self.segments["start"].tolist()))}
        epoch = step // self.steps_per_epoch  # the epoch of step + 1
        self._start_epoch(epoch)
        if not kept:
            return
        self.rng.bit_generator.state = kept[-1]["rng_state_after"]
        for d in kept:
            if d["epoch"] != epoch:
                continue
            chosen = np.array([key_of[(int(a), int(b))] for a, b, _ in decision_segments(d)], dtype=np.int64)
            self._remaining[chosen] = False
            self._block = ((d["step"] - 1) % self.steps_per_epoch, chosen)

    def close(self):
        if self.log is not None and not self.log.closed:
            self.log.close()

    def on_close(self):  # a RunRecorder hook: called when the run ends
        self.close()
