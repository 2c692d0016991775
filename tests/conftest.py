import os
import sys
from pathlib import Path

# tests/helpers.py and the example models in models/ import from the repository root.
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# `scripts/test.sh` runs two pytest-xdist workers on CI's two cores: one torch thread each, as two threads
# per worker would oversubscribe the cores (and most of the suite is Python-bound: tracing, small models).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
