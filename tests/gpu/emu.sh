#!/usr/bin/env bash
# tests/gpu/emu.sh: run the CUDA kernels on the host under the thread emulator
# (tests/gpu/cuda_emu.h) against the CPU backend, where no GPU exists. Needs g++ with C++20
# and a configured CUDA build folder (default build-cuda: meson setup build-cuda -Dcuda=enabled;
# ninja -C build-cuda). Takes a minute or two: one host thread per CUDA thread.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${1:-build-cuda}
if [ ! -f "$BUILD/librubric.a" ]; then
    echo "emu.sh: $BUILD/librubric.a is missing: build $BUILD first" >&2
    exit 2
fi
LIBS="$BUILD/librubric.a $(pkg-config --libs openblas libxxhash) -lm -fopenmp"
LIBS="$LIBS $(mpicc --showme:link)"
rc=0
for t in emu_kernels emu_attention; do
    g++ -std=c++20 -O1 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -Ikernels \
        -Ikernels/cuda -I"$BUILD" -Icommon "tests/gpu/$t.cpp" $LIBS -o "$BUILD/$t"
    OMP_NUM_THREADS=1 "$BUILD/$t" || rc=1
done
exit $rc
