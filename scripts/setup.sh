#!/usr/bin/env bash
# Create .venv and install what a job needs, once; later runs reuse it until pyproject.toml or the constraints
# change. Safe to run on a fresh machine: it needs only python3.
#   bash scripts/setup.sh demo   the main job (scripts/demo.sh): fc2conv and the `demo` extra (scikit-learn's digits)
#   bash scripts/setup.sh scan   the scanning demo: adds the `scan` extra (Dask, zarr, tifffile, scikit-image)
#   bash scripts/setup.sh view   `fc2conv view`: adds napari, and as root on Debian the X and GL libraries xvfb-run needs
#   bash scripts/setup.sh dev    everything the tests use (the default; scripts/test.sh): every extra, the X and GL
#                                libraries, and qemu-user, which emulates an AVX2 CPU for tests/test_cpu_classes.py
# A profile's install covers the ones before it in `demo < scan < view < dev`. pip's own output goes to
# .venv/pip.log and is shown only if an install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
profile=${1:-dev}
case "$profile" in
    demo) extras="demo"; rank=1 ;;
    scan) extras="demo,scan"; rank=2 ;;
    view) extras="demo,scan,view"; rank=3 ;;
    dev) extras="dev"; rank=4 ;;
    *) echo "error: scripts/setup.sh takes demo, scan, view or dev; got $profile" >&2; exit 2 ;;
esac

# napari draws headless only under xvfb-run (its GL fails on Qt's offscreen platform): Debian's display server and
# GL/X libraries, for `view` and the tests; qemu-user for the tests' emulated CPU. Only as root, only when missing.
debs=""
if [ "$rank" -ge 3 ]; then
    debs="xvfb xauth libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0 libxcb-icccm4
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0
libxcb-shape0 libxcb-cursor0"
fi
[ "$rank" -ge 4 ] && debs="$debs qemu-user"
if [ -n "$debs" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s $debs >/dev/null 2>&1; then
    echo "installing Debian's xvfb and GL/X libraries (headless napari)$([ "$rank" -ge 4 ] && echo \
        " and qemu-user (an emulated AVX2 CPU)")" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $debs >/dev/null 2>&1 || echo "warning: could not install them; napari screenshots (and the emulated-CPU" \
        "tests) will skip" >&2
fi

want=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
for have in demo scan view dev; do  # an install of this profile or of a larger one is enough
    case "$have" in demo) r=1 ;; scan) r=2 ;; view) r=3 ;; dev) r=4 ;; esac
    if [ "$r" -ge "$rank" ] && [ -f ".venv/.fc2conv-$have" ] && [ "$(cat ".venv/.fc2conv-$have")" = "$want" ]; then
        exit 0
    fi
done
case "$profile" in
    demo) echo "setting up .venv for the demo: PyTorch, ONNX, onnxruntime, scikit-learn (the first time takes a minute or two)" >&2 ;;
    *) echo "setting up .venv ($profile: the extras $extras; the first time takes a few minutes)" >&2 ;;
esac
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/pip.log
# --no-compile: PyTorch alone has thousands of modules; Python compiles the few a job imports when it first does.
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile \
        -c scripts/constraints.txt -e ".[$extras]" >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: pip could not install fc2conv[$extras] (its output is above and in $log)" >&2
    exit 1
fi
.venv/bin/python - <<'PY'
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
echo "$want" > ".venv/.fc2conv-$profile"
