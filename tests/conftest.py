"""Shared fixtures. Each fixture module is owned by the stage that builds the artifact it provides:
tests/fixtures_data.py (a small storyworld dataset, tokenized), tests/fixtures_meta.py (its metadata) and
tests/fixtures_run.py (a tiny trained run folder). All are built by the project's real stage scripts in a
temp workspace, once per test session."""
pytest_plugins = ["tests.fixtures_data", "tests.fixtures_meta", "tests.fixtures_run"]
