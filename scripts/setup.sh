#!/usr/bin/env bash
# Create .venv and install fc2conv with its development tools, once; later runs reuse it until
# pyproject.toml or the constraints change. Safe to run on a fresh machine: it needs only python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# `fc2conv view` draws headless only under xvfb-run (napari's GL fails on Qt's offscreen platform); its screenshot
# test skips without it. As root on Debian, install the display server and the GL and X libraries once, and
# qemu-user, which emulates an AVX2 CPU for tests/test_cpu_classes.py (skipped without it).
debs="xvfb xauth libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0 libxcb-shape0
libxcb-cursor0 qemu-user"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s $debs >/dev/null 2>&1; then
    echo "installing Debian's xvfb and GL/X libraries (headless napari) and qemu-user (an emulated AVX2 CPU)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $debs >/dev/null || echo "warning: could not install them; the napari screenshot and emulated-CPU tests" \
        "will skip" >&2
fi
stamp=.venv/.fc2conv-installed
want=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up .venv (PyTorch is large: the first install takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[dev]"
.venv/bin/python - <<'PY'
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
echo "$want" > "$stamp"
