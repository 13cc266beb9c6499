#!/usr/bin/env bash
# The quickstart: set up, then prepare a real English corpus (the Python standard library's
# docstrings), pretrain a small BERT on 2 local Ray workers with ZeRO-2, export it and show a
# fill-mask prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/bertctl run jobs/quickstart.yaml "$@"
