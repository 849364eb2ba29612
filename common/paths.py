"""Where each stage reads and writes, and the defaults every published command runs with.

The project root holds data/ and out/. It is, in order: the --root flag of a stage (set_root), the environment
variable LLAMA_PREBIAS_ROOT, or the working directory. So tests and benchmarks point a stage at a temp
workspace without chdir, and `dash_llama/app.py --root /proj --out /elsewhere` still finds /proj/data.
Paths a user passes on the command line (--out_dir out/x) stay relative to the working directory as usual;
only the defaults below are resolved against the root.
"""
import os
from pathlib import Path

from common.errors import UserError

ROOT_ENV = "LLAMA_PREBIAS_ROOT"

# the demo every published command defaults to: the embedded corpus, its 512-piece vocab, the run out/demo
DEFAULT_DATASET = "storyworld"
DEFAULT_VOCAB = 512
DEFAULT_RUN = "demo"             # run folder name under out/
DEFAULT_EXPERIMENT = "example"   # experiment name under out/experiments/<kind>/

# dataset name -> raw shard folder under data/ (TinyStories keeps the archive's own folder name)
RAW_FOLDERS = {"tinystories": "TinyStories_all_data"}

_root = None  # set by set_root (a stage's --root); None = environment or working directory


def set_root(path):
    """Use `path` as the project root for this process (None: back to $LLAMA_PREBIAS_ROOT or the cwd)."""
    global _root
    if path is not None and not Path(path).is_dir():
        raise UserError(f"project root not found: {path} — give --root (or ${ROOT_ENV}) a folder holding data/ "
                        f"and out/")
    _root = Path(path) if path is not None else None


def root() -> Path:
    """The project root: set_root's path, else $LLAMA_PREBIAS_ROOT, else the working directory ('.')."""
    if _root is not None:
        return _root
    return Path(os.environ.get(ROOT_ENV) or ".")


def data_dir() -> Path:
    return root() / "data"


def out_dir() -> Path:
    return root() / "out"


def default_run_dir() -> Path:
    """out/demo under the root: the run every run-reading command opens when given no --out_dir."""
    return out_dir() / DEFAULT_RUN


def add_root_argument(parser):
    """Give an argparse parser the shared --root flag; call apply_root(args) after parsing."""
    parser.add_argument("--root", default=None,
                        help=f"project root holding data/ and out/ (default: ${ROOT_ENV}, else the working directory)")
    return parser


def apply_root(args):
    """Set the root from a parsed --root (no-op when absent)."""
    if getattr(args, "root", None) is not None:
        set_root(args.root)
    return args


def raw_dir(dataset: str) -> Path:
    """Folder of raw JSON shards for a dataset: data/TinyStories_all_data or data/<name>."""
    return data_dir() / RAW_FOLDERS.get(dataset, dataset)


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
