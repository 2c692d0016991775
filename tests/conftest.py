import sys
from pathlib import Path

# tests/helpers.py and the example models in models/ import from the repository root.
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
