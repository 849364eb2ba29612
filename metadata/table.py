"""The one reader of a dataset's per-story metadata table (data/<raw>/tok<V>/metadata.parquet), kept apart from
batch_metadata.py so that train.py, the batch viewer, eval, experiments and the dashboard can read the table
without importing the metric libraries."""
import pandas as pd

from common.errors import UserError
from common.paths import tok_dir


def metadata_path(dataset, vocab_size):
    return tok_dir(dataset, vocab_size) / "metadata.parquet"


def read_metadata(dataset, vocab_size, columns=None):
    """The metadata table of (dataset, vocab) as a DataFrame (a story_id column, sorted by story_id)."""
    path = metadata_path(dataset, vocab_size)
    if not path.exists():
        raise UserError(f"story metadata not found: {path} — run: python metadata/batch_metadata.py "
                        f"compute_metadata --dataset {dataset} --vocab_size {vocab_size}")
    try:
        table = pd.read_parquet(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for a corrupt file or an unknown column
        raise UserError(f"cannot read {path} ({str(e).splitlines()[0]}) — delete it and re-run compute_metadata")
    if (columns is None or "story_id" in columns) and "story_id" not in table.columns:
        raise UserError(f"{path} has no story_id column — re-run compute_metadata")
    return table
