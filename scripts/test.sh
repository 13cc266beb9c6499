#!/usr/bin/env bash
# The test suite: unit tests, then integration against real local services (Ray, DeepSpeed,
# an S3 server on loopback, PostgreSQL on 127.0.0.1:5432), then end-to-end and chaos tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_DEDUP_LOGS=0 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
# The slowest tests are printed at the end: the whole suite, set-up included, must stay well under
# CI's 50-minute budget.
exec .venv/bin/python -m pytest --durations=25 "$@"
