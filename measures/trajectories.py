"""Every story's trajectory: per-story loss of a fixed audit set at every checkpoint, learning and forgetting
events (Toneva et al. 2019) and data maps (Swayamdipta et al. 2020), joined with the story metadata.

Audit set (fixed for the run, chosen before any checkpoint is read, so a run that is still training has it):
  train  n stories that the run's schedule trains within its n_steps (the sampler rebuilt from config.json and
         checked against its selection_sha256), the first n of them in a seeded permutation (AUDIT_SEED); with
         --sampler=dynamic (order decided while training) n stories of the selection (epochs_trained tells)
  val    the first n of the dataset's fixed iid validation sample (TokenizedDataset.validation_sample, ranked)
Per checkpoint and story, on every target of the story segmented as in training (modelling/data.py):
  loss       mean next-token cross-entropy (nats)
  token_acc  share of targets that are the model's argmax prediction (greedy next-token accuracy)
  p_mean     mean probability of the target token
Events (story level, over the evaluated checkpoints in step order, the state before the first one = not learned):
  learned at a checkpoint  token_acc >= LEARNED_ACC (the story's "correct classification" of Toneva et al.; a
                           fixed bar, so an untrained model (token_acc ~ 1/vocab) has learned nothing: the null)
  learning_events          not learned -> learned transitions; forgetting_events: learned -> not learned
  learned_step             the first checkpoint learned (NaN: never); unforgettable: learned and never forgotten
  first_trained_step, epochs_trained   from the batch log (the record of what was trained): the first step
                           any segment of the story was trained; its targets trained / its targets
Data map (Swayamdipta et al.: confidence and variability of the gold label's probability across epochs; here
across checkpoints): confidence = mean p_mean, variability = std p_mean (population), correctness = share of
checkpoints learned.

Writes out/RUN/tables/trajectories.csv (long: step, set, story_id, n_tokens, loss, token_acc, p_mean),
trajectories.json (provenance, settings, audit ids, steps_done), story_events.csv (one row per audit story:
events, data map, storyworld attributes, metadata columns) and story_events_by.csv (per attribute value: which
kinds of stories are learned late, or forgotten). docs/FORMATS.md.
"""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.io import atomic_path, provenance
from measures.step_table import resume_rows, write_rows
from modelling.data import SegmentBatches, pack_rows, row_layout, segment_keys

LEARNED_ACC = 0.5     # a story is learned at a checkpoint when at least half its targets are the argmax
AUDIT_SEED = 19       # permutation of the scheduled train stories that picks the audit set
ROWS_PER_BATCH = 16
TRAJ_TABLE, TRAJ_STATE = "trajectories.csv", "trajectories.json"
EVENTS_TABLE, GROUPS_TABLE = "story_events.csv", "story_events_by.csv"
VERSION = "1"
ATTRIBUTES = ("set", "hero_gender", "ending", "plot", "offensive", "fact")  # grouped in story_events_by.csv


# ---------------------------------------------------------------------------------------------------------
# the audit set

def scheduled_train_stories(run_config, ds):
    """{story_id: first scheduled step} of the stories the run's sampler trains within n_steps, rebuilt from
    config.json (the schedule is a pure function of it) and checked against the recorded selection_sha256."""
    from modelling.samplers import SegmentSampler, load_metadata
    cfg = run_config["config"]
    dynamic = cfg.get("sampler") == "dynamic"  # its order is decided while training: only the selection is known
    needs_meta = (cfg.get("sort_by") or cfg.get("filter_column")) and not dynamic
    try:
        sampler = SegmentSampler(ds.story_ids("train"), ds.n_tokens, cfg["max_seq_len"],
                                 run_config["segments_per_step"], "random" if dynamic else cfg["sampler"],
                                 cfg["data_seed"],
                                 load_metadata(cfg["dataset"], cfg["vocab_size"]) if needs_meta else None,
                                 cfg.get("sort_by", ""), cfg.get("sort_order", "ascending"),
                                 cfg.get("filter_column", ""), cfg.get("threshold", 0.0),
                                 cfg.get("filter_keep", "above"), cfg.get("n_stories", 0),
                                 cfg.get("selection_seed", 0))
    except (KeyError, UserError) as e:
        raise UserError(f"--trajectories cannot rebuild the run's schedule from its config.json ({e}) — run "
                        f"without --trajectories") from None
    if sampler.selection_sha256 != run_config.get("selection_sha256"):
        raise UserError("--trajectories: the rebuilt selection differs from the run's selection_sha256 (the "
                        "dataset changed since training?) — evaluate against the dataset the run trained on")
    if dynamic:
        return {int(s): None for s in sampler.selection}
    first = {}
    for step in range(int(run_config["n_steps"]), 0, -1):  # backwards: the last write is the first step
        for sid in sampler.step_segments(step)["story_id"].tolist():
            first[sid] = step
    return first


def audit_set(run_config, ds, n):
    """DataFrame (set, story_id) of the audit stories: n scheduled train stories, n fixed validation stories."""
    trained = np.array(sorted(scheduled_train_stories(run_config, ds)), dtype=np.int64)
    train_ids = np.sort(trained[np.random.default_rng(AUDIT_SEED).permutation(len(trained))[:n]])
    val_ids = np.sort(np.asarray(ds.validation_sample("iid", n=n, ranked=True)[:n], dtype=np.int64))
    return pd.DataFrame({"set": ["train"] * len(train_ids) + ["val"] * len(val_ids),
                         "story_id": np.concatenate([train_ids, val_ids])})


# ---------------------------------------------------------------------------------------------------------
# per-story measurements at one checkpoint

@torch.no_grad()
def story_token_stats(model, batches, story_ids, rows_per_batch=ROWS_PER_BATCH):
    """DataFrame per story (in the given order): n_tokens (targets), loss, token_acc, p_mean over every target of
    the story, its segments packed as in training (modelling/data.py)."""
    segments = batches.segments(story_ids)
    packed = pack_rows(segments, batches.max_seq_len)
    sums = np.zeros((len(packed), 3))  # nll, correct, p
    for first in range(0, int(packed["row"].max()) + 1 if len(packed) else 0, rows_per_batch):
        take = np.flatnonzero((packed["row"] >= first) & (packed["row"] < first + rows_per_batch))
        x, y, pos, seg = batches.batch(packed[take])
        logp = F.log_softmax(model(x, positions=pos, segment_ids=seg).float(), dim=-1)
        target_logp = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
        stats = torch.stack([-target_logp, (logp.argmax(-1) == y).float(), target_logp.exp()], -1).numpy()
        row_of, offset, _ = row_layout(packed[take])
        for k, r, at, n in zip(take, row_of, offset, packed["n_tokens"][take]):
            sums[k] = stats[r, at:at + n].sum(0)
    order = np.argsort(segment_keys(packed), kind="stable")  # packing reordered the segments
    sums = sums[order[np.searchsorted(segment_keys(packed)[order], segment_keys(segments))]]
    story_of = np.searchsorted(np.unique(segments["story_id"]), segments["story_id"])
    per_story = np.zeros((story_of.max() + 1 if len(story_of) else 0, 4))
    np.add.at(per_story, story_of, np.column_stack([sums, segments["n_tokens"]]))
    by_id = dict(zip(np.unique(segments["story_id"]).tolist(), per_story))
    rows = np.array([by_id[int(s)] for s in story_ids])
    n = rows[:, 3]
    return pd.DataFrame({"story_id": np.asarray(story_ids, np.int64), "n_tokens": n.astype(np.int64),
                         "loss": rows[:, 0] / n, "token_acc": rows[:, 1] / n, "p_mean": rows[:, 2] / n})


# ---------------------------------------------------------------------------------------------------------
# events and data maps from the trajectories

def story_events(traj, learned_acc=LEARNED_ACC):
    """One row per (set, story_id) from the long trajectory table: learning/forgetting events, learned_step,
    unforgettable, final loss, data-map confidence / variability / correctness."""
    traj = traj.sort_values(["set", "story_id", "step"])
    out = []
    for (kind, sid), part in traj.groupby(["set", "story_id"], sort=False):
        learned = (part["token_acc"].to_numpy() >= learned_acc).astype(int)
        change = np.diff(np.concatenate([[0], learned]))  # the state before the first checkpoint: not learned
        steps = part["step"].to_numpy()
        p = part["p_mean"].to_numpy()
        n_forget = int((change < 0).sum())
        out.append({"set": kind, "story_id": int(sid), "n_tokens": int(part["n_tokens"].iloc[0]),
                    "n_checkpoints": len(part), "learning_events": int((change > 0).sum()),
                    "forgetting_events": n_forget,
                    "learned_step": float(steps[learned.argmax()]) if learned.any() else np.nan,
                    "learned_final": int(learned[-1]), "unforgettable": int(learned.any() and n_forget == 0),
                    "loss_first": float(part["loss"].iloc[0]), "loss_final": float(part["loss"].iloc[-1]),
                    "loss_min": float(part["loss"].min()), "token_acc_final": float(part["token_acc"].iloc[-1]),
                    "confidence": float(p.mean()), "variability": float(p.std()),
                    "correctness": float(learned.mean())})
    return pd.DataFrame(out)


def trained_steps(batch_log, story_ids, n_tokens):
    """(first step any of its segments was trained, epochs trained = targets trained / its targets) per story,
    from the batch log (NaN / 0 where not trained yet)."""
    first = {int(s): np.nan for s in story_ids}
    trained = {int(s): 0 for s in story_ids}
    if batch_log is not None and len(batch_log):
        segs = batch_log.steps(1, len(batch_log))
        step_of = np.repeat(np.arange(1, len(batch_log) + 1), batch_log.segments_per_step())
        for sid, n, step in zip(segs["story_id"].tolist(), segs["n_tokens"].tolist(), step_of.tolist()):
            if sid in trained:
                trained[sid] += n
                if np.isnan(first[sid]):
                    first[sid] = step
    return first, {s: trained[s] / max(1, int(n)) for s, n in zip(map(int, story_ids), n_tokens)}


def story_attributes(ds, story_ids):
    """Storyworld's ground truth per story (NaN columns for a dataset without it): hero_gender, ending, plot,
    offensive (an injected offensive word), fact (an injected fact)."""
    rows = []
    for sid in story_ids:
        r = ds.record(int(sid))
        hero = next((c for c in r.get("characters", []) if c.get("role") == "hero"), {})
        rows.append({"story_id": int(sid), "hero_gender": hero.get("gender"), "ending": r.get("ending"),
                     "plot": r["plot"] if isinstance(r.get("plot"), str) else "+".join(r.get("plot") or []) or None,
                     "offensive": int(bool(r.get("offensive_words"))) if "offensive_words" in r else np.nan,
                     "fact": int(bool(r.get("facts"))) if "facts" in r else np.nan})
    return pd.DataFrame(rows)


def group_events(events):
    """story_events_by.csv: per attribute value, n stories, share ever learned, median learned_step, share with
    a forgetting event, mean forgetting events, mean confidence and variability."""
    out = []
    for attr in ATTRIBUTES:
        if attr not in events or events[attr].isna().all():
            continue
        for value, g in events.groupby(attr):
            out.append({"attribute": attr, "value": value, "n": len(g),
                        "learned_share": g["learned_step"].notna().mean(),
                        "learned_step_median": g["learned_step"].median(),
                        "forgotten_share": (g["forgetting_events"] > 0).mean(),
                        "forgetting_events_mean": g["forgetting_events"].mean(),
                        "confidence_mean": g["confidence"].mean(), "variability_mean": g["variability"].mean()})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------
# the per-checkpoint measure eval.py --trajectories drives

class Trajectories:
    """needs(step) / add(step, model) per checkpoint, finish(run, metadata) for the derived tables."""

    def __init__(self, run_dir, run_config, ds, n_audit, rebuild=False):
        self.tables = Path(run_dir) / "tables"
        self.ds = ds
        self.audit = audit_set(run_config, ds, n_audit)
        max_len = int(run_config.get("model_args", {}).get("max_seq_len", run_config["config"]["max_seq_len"]))
        self.batches = SegmentBatches(ds, max_len, int(ds.manifest["bos_id"]))
        ids = self.audit["story_id"].to_numpy()
        self.settings = {"version": VERSION, "n_audit": int(n_audit), "learned_acc": LEARNED_ACC,
                         "audit_seed": AUDIT_SEED,
                         "audit_sha256": hashlib.sha256(np.asarray(ids, "<i8").tobytes()).hexdigest()}
        self.rows, self.done = resume_rows(self.tables / TRAJ_TABLE, self.tables / TRAJ_STATE, self.settings,
                                           "trajectory", "--audit_stories", rebuild)

    def describe(self):
        return f"trajectories of {(self.audit['set'] == 'train').sum()} train + {(self.audit['set'] == 'val').sum()} " \
               f"val audit stories"

    def outputs(self):
        return f"{self.tables / TRAJ_TABLE}, {self.tables / EVENTS_TABLE}, {self.tables / GROUPS_TABLE}"

    def needs(self, step):
        return int(step) not in self.done

    def add(self, step, model):
        stats = story_token_stats(model, self.batches, self.audit["story_id"].to_numpy())
        stats.insert(0, "set", self.audit["set"].to_numpy())
        stats.insert(0, "step", int(step))
        self.rows = pd.concat([self.rows, stats], ignore_index=True).sort_values(["step", "set", "story_id"])
        self.done.add(int(step))
        write_rows(self.tables / TRAJ_TABLE, self.tables / TRAJ_STATE, self.rows, {
            "provenance": provenance(), "settings": self.settings, "steps_done": sorted(self.done),
            "audit": {k: g["story_id"].tolist() for k, g in self.audit.groupby("set")}})

    def finish(self, run, metadata=None):
        if not len(self.rows):
            return
        events = story_events(self.rows)
        first, epochs = trained_steps(run.batch_log, events["story_id"], events["n_tokens"])
        events.insert(3, "first_trained_step", [first[s] for s in events["story_id"]])
        events.insert(4, "epochs_trained", [epochs[s] for s in events["story_id"]])
        events = events.merge(story_attributes(self.ds, events["story_id"]), on="story_id", how="left")
        if metadata is not None:
            numeric = [c for c in metadata.columns if c not in ("story_id", "shard", "record", "split")
                       and pd.api.types.is_numeric_dtype(metadata[c])]
            events = events.merge(metadata[["story_id"] + numeric].add_prefix("meta_")
                                  .rename(columns={"meta_story_id": "story_id"}), on="story_id", how="left")
        with atomic_path(self.tables / EVENTS_TABLE, suffix=".csv") as tmp:
            events.to_csv(tmp, index=False)
        with atomic_path(self.tables / GROUPS_TABLE, suffix=".csv") as tmp:
            group_events(events).to_csv(tmp, index=False)
