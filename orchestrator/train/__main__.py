"""`python -m orchestrator.train --manifest PATH` (see orchestrator/train/entry.py)."""

import sys

from orchestrator.train.entry import main

if __name__ == "__main__":
    sys.exit(main())
