"""``python -m sage.unified.coordinator``: a standalone coordinator configured from the environment."""

from sage.unified.coordinator.main import run

run()
