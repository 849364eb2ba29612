"""Where each stage reads and writes. Paths are relative to the working directory (run stages from the repo
root; tests run them from a temp folder), so `data/` and `out/` are always those of the current workspace."""
from pathlib import Path

from common.errors import UserError

DATA_DIR = Path("data")
OUT_DIR = Path("out")

# dataset name -> raw shard folder under data/ (TinyStories keeps the archive's own folder name)
RAW_FOLDERS = {"tinystories": "TinyStories_all_data"}


def raw_dir(dataset: str) -> Path:
    """Folder of raw JSON shards for a dataset: data/TinyStories_all_data or data/<name>."""
    return DATA_DIR / RAW_FOLDERS.get(dataset, dataset)


def tok_dir(dataset: str, vocab_size: int) -> Path:
    """Folder of tokenizer, token shards, index and metadata for (dataset, vocab): data/<raw>/tok<N>."""
    return raw_dir(dataset) / f"tok{int(vocab_size)}"


def tokenizer_model(dataset: str, vocab_size: int) -> Path:
    """The SentencePiece model used for (dataset, vocab). vocab 0 = a Llama 2 tokenizer copied in by pretokenize."""
    return tok_dir(dataset, vocab_size) / "tokenizer.model"


def require(path, what: str, fix: str) -> Path:
    """Return `path` if it exists, else raise one clear line naming it and the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path} — {fix}")
    return path
