"""Shared metadata fixture: `meta_dataset` — compute_metadata run by the real stage script on `tok_dataset`.

    meta_dataset  dict: workspace, dataset, vocab_size, n_stories (as tok_dataset) plus
                  dir (Path of data/storyworld/tok512), stdout (the stage's output)
                  files: dir/metadata.parquet, dir/metadata.json, dir/ngram.npz, workspace/out/tables/batch_metrics.csv
"""
import pytest

from tests.fixtures_data import run_stage


@pytest.fixture(scope="session")
def meta_dataset(tok_dataset):
    ws = tok_dataset["workspace"]
    proc = run_stage(ws, "metadata/batch_metadata.py", "compute_metadata", "--dataset", tok_dataset["dataset"],
                     "--vocab_size", tok_dataset["vocab_size"])
    return {**tok_dataset, "dir": ws / "data" / tok_dataset["dataset"] / f"tok{tok_dataset['vocab_size']}",
            "stdout": proc.stdout}
