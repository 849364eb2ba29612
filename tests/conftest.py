"""Shared fixtures. Each fixture module is owned by the stage that builds the artifact it provides:
tests/fixtures_data.py (a small storyworld dataset, tokenized, with metadata) and tests/fixtures_run.py
(a tiny trained run folder). Everything is built by the project's real stage scripts in a temp workspace."""
pytest_plugins = ["tests.fixtures_data", "tests.fixtures_run"]
