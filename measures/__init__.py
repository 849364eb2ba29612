"""Measurement library shared by the stage scripts, the experiments and the dashboard (nothing here is a CLI)."""
