"""The `fc2conv` command: inspect, convert and verify saved checkpoints (`checkpoints.py`, with PyTorch), and run and
scan converted ONNX models (`deployed.py`, without it), quantize them and say what this CPU runs each precision as
(`precision.py`: quantize, doctor; without it), and show a scan in napari (`view.py`, without it).

Exit codes: 0 success, 1 verification failed (nothing is written), 2 bad usage or input (the message on
stderr names the file or flag at fault). Outputs are written atomically and an existing file is replaced
only with --force. Checkpoints are read without unpickling code unless --trust-pickle is given;
--model-def FILE.py:FACTORY imports and runs that Python file, which is the user's explicit choice.
torch is imported inside the commands that need it, so `fc2conv run` works where only onnxruntime is installed.
"""

from __future__ import annotations

import signal

from . import checkpoints, deployed, precision, view  # noqa: F401 - they register their commands on `app`
from .app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, app

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "app", "main"]


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C, so temporary and staged outputs are removed."""
    signal.signal(signal.SIGTERM, _terminated)
    app()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
