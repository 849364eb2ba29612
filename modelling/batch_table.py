"""One optimizer step of a run as a table: its packed segments in training order with their metadata metrics.
Shared by modelling/batch_viewer.py and the dashboard's Data page."""
import pandas as pd

from common.errors import UserError
from metadata.table import metadata_path
from modelling.samplers import load_metadata


def segment_label(story_id, start, n_tokens, story_tokens):
    """'story 812' for a whole story, 'story 812, tokens 256–511' for a chunk of a longer one."""
    if start == 0 and n_tokens >= story_tokens:
        return f"story {story_id}"
    return f"story {story_id}, tokens {start}–{start + n_tokens - 1}"


def step_table(run, step, columns=None, dataset=None):
    """DataFrame of the step's segments in training order: row, story_id, start, n_tokens (targets trained),
    label, and the story's metadata columns (all, or `columns`). dataset: the run's TokenizedDataset (for
    story lengths in the labels); read from the config when None."""
    if run.batch_log is None:
        raise UserError(f"{run.dir} has no batch log (trained with --instrument=False?)")
    segments = run.batch_log.step(step)
    cfg = run.config["config"]
    if dataset is None:
        from tokenization.dataset import TokenizedDataset
        dataset = TokenizedDataset(cfg["dataset"], cfg["vocab_size"])
    story_tokens = dataset.n_tokens(segments["story_id"])
    table = pd.DataFrame({"row": segments["row"], "story_id": segments["story_id"], "start": segments["start"],
                          "n_tokens": segments["n_tokens"]})
    table.insert(0, "position", range(len(table)))
    table["label"] = [segment_label(*a) for a in zip(table["story_id"], table["start"], table["n_tokens"],
                                                     story_tokens)]
    if metadata_path(cfg["dataset"], cfg["vocab_size"]).exists():
        metadata = load_metadata(cfg["dataset"], cfg["vocab_size"])
        wanted = list(metadata.columns) if not columns else columns
        unknown = [c for c in wanted if c not in metadata.columns]
        if unknown:
            raise UserError(f"unknown metadata column(s) {', '.join(unknown)}; available: "
                            f"{', '.join(metadata.columns)}")
        clash = [c for c in wanted if c in table.columns]
        table = table.join(metadata[wanted].rename(columns={c: f"story_{c}" for c in clash}), on="story_id")
    return table
