"""One training attempt as a process (``python -m orchestrator.train``): start or join Ray, run the
``TorchTrainer`` (``launch``), and end in a contract exit code (``outcome``).

``launch`` imports Ray Train at import time, so only ``entry``'s and ``outcome``'s names are here.
"""

from orchestrator.train.driver.entry import main, run_attempt
from orchestrator.train.driver.outcome import ending_of

__all__ = ["ending_of", "main", "run_attempt"]
