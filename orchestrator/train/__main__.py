"""`python -m orchestrator.train --manifest PATH` (see orchestrator/train/driver/entry.py)."""

import logging
import os
import sys

# Before Ray is imported (it reads this once): an attempt's log keeps every worker's lines. Ray
# folds lines that differ only in their numbers into one "[repeated Nx across cluster]", which
# would hide all but one worker's `timing:` lines, the ones a slow start or resize is read from.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from orchestrator.train.driver.entry import main  # noqa: E402 - after the line above

if __name__ == "__main__":
    code = main()
    # Interpreter teardown with torch, Ray and DeepSpeed loaded takes over a second (measured 1.3 s
    # here), and it sits between an attempt's end and the manager seeing it: inside every recovery.
    # By now everything that matters happened in main(): the checkpoint committed, the final
    # heartbeat sent, Ray disconnected or shut down. Flush what is buffered and leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
