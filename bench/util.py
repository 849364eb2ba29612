"""Helpers shared by the bench modules."""
import contextlib
import os

from common.paths import set_root


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
