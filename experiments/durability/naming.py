"""Names shared by the durability experiment runner, its analysis and the dashboard's Experiments page:
where experiments live, the baseline condition, and how a run folder is named (runs/<condition>_s<seed>)."""
import re

from common.paths import out_dir

BASELINE = "random"   # the condition every sorted order is compared with
RUN_NAME = re.compile(r"^(?P<condition>.+)_s(?P<seed>\d+)$")


def experiments_dir():
    """out/experiments/durability under the project root: one folder per experiment name."""
    return out_dir() / "experiments" / "durability"


def run_name(condition, init_seed):
    """runs/<condition>_s<init seed>: the folder of one condition's run with one init seed."""
    return f"{condition}_s{int(init_seed)}"
