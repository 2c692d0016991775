import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# tests/helpers.py and the example models in models/ import from the repository root.
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# `scripts/test.sh` runs two pytest-xdist workers on CI's two cores: one torch thread each, as two threads
# per worker would oversubscribe the cores (and most of the suite is Python-bound: tracing, small models). A child
# process whose outputs a test compares bit for bit with its own runs as many: see helpers.same_threads_env.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

# Every hypothesis test, also one without its own @settings: the same examples on every run, and no deadline (the
# default 200 ms per example fails examples that are slow only because the 2-core CI box is busy).
settings.register_profile("fc2conv", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fc2conv")
