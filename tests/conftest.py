"""Shared fixtures. Each fixture module is owned by the stage that builds the artifact it provides:
tests/fixtures_data.py (a small storyworld dataset, tokenized), tests/fixtures_meta.py (its metadata) and
tests/fixtures_run.py (a tiny trained run folder). All are built by the project's real stage scripts in a
temp workspace, once per test session."""
from pathlib import Path

import pytest

_FIXTURE_MODULES = ["fixtures_data", "fixtures_meta", "fixtures_run"]
# A test that asks for a fixture whose module is absent fails with pytest's "fixture not found".
pytest_plugins = [f"tests.{m}" for m in _FIXTURE_MODULES if (Path(__file__).parent / f"{m}.py").exists()]


@pytest.fixture(autouse=True)
def _root_reset():
    """A stage's main() called in process with --root sets the project root for the process; undo it."""
    yield
    from common.paths import set_root
    set_root(None)
