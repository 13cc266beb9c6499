"""Shared test set-up. Fixtures for each area live in that area's conftest.py / tests/support."""

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
