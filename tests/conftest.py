"""Shared test set-up. Fixtures for each area live in that area's conftest.py / tests/support."""

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property-based tests: the same examples on every run (derandomize) so CI is reproducible and a
# failure reproduces locally; no example database written into the tree. HYPOTHESIS_PROFILE=explore
# draws fresh examples on each run, for hunting new crashes by hand.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", parent=settings.get_profile("ci"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
