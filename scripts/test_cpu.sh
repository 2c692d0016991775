#!/usr/bin/env bash
# Run tests as if on a CPU class of fc2conv.runtime.cpu: `bash scripts/test_cpu.sh CLASS [pytest arguments]`.
# Every class pins fc2conv's own decisions and reports (pytest --cpu-class). avx2 is also emulated: the tests run under
# `qemu-x86_64 -cpu Haswell`, so onnxruntime and OpenVINO compute as on a real AVX2 CPU (the processes the tests start
# run natively: qemu-user follows no exec). Emulation is slow (importing torch alone takes 20 s), so the default
# tests are the reduced-precision ones, where the classes differ.
set -euo pipefail
cd "$(dirname "$0")/.."
classes="avx2, avx512, avx512-vnni-bf16, amx"
class=${1:?"usage: scripts/test_cpu.sh CLASS [pytest arguments]; CLASS is one of $classes"}
shift
# Test files or node ids among the arguments replace the default ones; other arguments are pytest options.
tests=("$@")
named=false
for argument in "$@"; do
    [ -e "${argument%%::*}" ] && named=true
done
$named || tests=(tests/test_precision.py tests/test_precision_cli.py tests/test_precision_inputs.py
                 tests/test_precision_budget.py tests/test_precision_auto.py tests/test_doctor.py
                 tests/test_cpu_classes.py "$@")
bash scripts/setup.sh dev
if [ "$class" = avx2 ]; then
    if ! command -v qemu-x86_64 >/dev/null; then
        echo "emulating avx2 needs qemu-x86_64 (Debian's qemu-user: scripts/setup.sh installs it as root)" >&2
        exit 2
    fi
    # qemu warns once per CPU feature it cannot emulate (none the tests need): those lines are dropped.
    qemu-x86_64 -cpu Haswell .venv/bin/python -m pytest -p no:xdist --cpu-class avx2 "${tests[@]}" \
        2> >(grep -v "^qemu-x86_64: warning: TCG doesn't support" >&2)
    exit
fi
.venv/bin/python -m pytest -n 2 --cpu-class "$class" "${tests[@]}"
