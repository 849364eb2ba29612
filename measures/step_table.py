"""One table per run that eval.py grows a checkpoint at a time (trajectories.csv, covert_probes.csv), beside a
JSON state recording the settings it was made with, so a re-run adds only the missing steps and never mixes
settings."""
import json

import pandas as pd

from common.errors import UserError
from common.io import atomic_path, atomic_write_json


def resume_rows(table_path, state_path, settings, what, option, rebuild=False):
    """(rows, done steps) already in table_path when state_path records the same settings; empty when absent or
    rebuild. Other settings: UserError naming `option` (the flag that would reproduce them)."""
    rows = pd.DataFrame()
    if state_path.exists() and not rebuild:
        state = json.loads(state_path.read_text())
        if state.get("settings") != settings:
            raise UserError(f"{state_path} records other {what} settings ({state.get('settings')}) — pass "
                            f"--rebuild, or the recorded {option}")
        if table_path.exists():
            rows = pd.read_csv(table_path)
    return rows, set(rows["step"].astype(int)) if len(rows) else set()


def write_rows(table_path, state_path, rows, state):
    """The table and its state, each atomically (the state last: it vouches for the table)."""
    with atomic_path(table_path, suffix=".csv") as tmp:
        rows.to_csv(tmp, index=False)
    atomic_write_json(state_path, state)
