"""Names shared by the durability experiment and its analysis: where experiments live, the baseline condition
and the condition of the baseline's init × order grid cells."""
from common.paths import out_dir

BASELINE = "random"        # the condition every sorted order is compared with, pair by pair
GRID = "random_grid"       # off-diagonal cells of the init × order grid of the baseline (runs random_s<i>_d<j>)
DATA_SEED_OFFSET = 1000    # pair i's random order uses data seed 1000 + i (visibly not an init seed)


def experiments_dir():
    """out/experiments/durability under the project root: one folder per experiment name."""
    return out_dir() / "experiments" / "durability"
