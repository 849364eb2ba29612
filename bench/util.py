"""Helpers shared by the bench modules."""
import contextlib
import os


@contextlib.contextmanager
def quiet_in(folder):
    """cwd = folder (stages resolve data/ relative to it); progress bars and prints off for clean timings."""
    old = os.getcwd()
    os.chdir(folder)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            yield
    finally:
        os.environ.pop("TQDM_DISABLE", None)
        os.chdir(old)
