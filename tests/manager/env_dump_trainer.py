"""A stand-in trainer that writes the environment it was given, as JSON, next to its manifest."""

import json
import os
import sys
from pathlib import Path

manifest = Path(sys.argv[sys.argv.index("--manifest") + 1])
(manifest.parent / "trainer-env.json").write_text(json.dumps(dict(os.environ)))
