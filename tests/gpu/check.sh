#!/usr/bin/env bash
# tests/gpu/check.sh: the one script for a lent GPU machine.
#
#   1. finds the card (nvidia-smi: name, compute capability) and its dense bf16 peak,
#   2. makes the libraries the build needs available: the system's when pkg-config finds them,
#      else the .deb files tests/gpu/fetch-debs.sh put in build-gpu-debs/ (carried there),
#      unpacked with dpkg -x into a private folder,
#   3. builds rubric with -Dcuda=enabled, adding the card's architecture to nvcc's targets
#      (the build always has sm_86 and sm_90),
#   4. runs every kernel check (test_kernels_cuda: CUDA against the CPU backend), then times
#      attention forward and backward in fp32 and bf16 against torch's SDPA (bench_attention.py),
#      and runs the attention checks under compute-sanitizer's memcheck and racecheck,
#   5. trains 20 steps of a random model with Qwen3-0.6B's shape (tests/gpu/gpu_train_step:
#      the model's step alone, timed) with fp32 GEMMs, then 10 with TF32 and 10 with bf16
#      tensor-core GEMMs and attention (RUBRIC_CUDA_GEMM; fp32 storage and accumulation),
#      then the whole `rubric train` (prep, ZeRO over NCCL, checkpoints, evaluation,
#      score_after_train) of a small random model for 8 steps with --backend cuda and with
#      --backend cpu: the losses of every step side by side (the two must agree within 1e-3),
#   6. scores the 2,300 EmoBank demo rows with `rubric score --backend cuda`,
#   7. prints a table: ms per step, tokens/s, MFU against the dense bf16 peak, rows/s, memory.
#
# Without a GPU it builds, says so and stops (exit 3). Exit 1 when a stage fails. The table
# and the logs also go to $OUT (set by the device tool; default $WORK/out).
# Environment: BUILD (build folder, default build-gpu-check), WORK (scratch, default
# /tmp/rubric-gpu-check), DEBS (default build-gpu-debs), STEPS (20), SEQ (1024), NSEQ (8),
# FORCE_DEBS=1 (use the .deb files even where the system has the libraries: a dry run).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
BUILD=${BUILD:-build-gpu-check}
WORK=${WORK:-/tmp/rubric-gpu-check}
DEBS=${DEBS:-$ROOT/build-gpu-debs}
OUT=${OUT:-$WORK/out}
STEPS=${STEPS:-20}
SEQ=${SEQ:-1024}
NSEQ=${NSEQ:-8}
mkdir -p "$WORK" "$OUT"
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "check.sh: error: $*" >&2; exit 1; }

# ---- 1. the card ----
GPU="" CC="" PEAK=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    case "$GPU" in
        *A40*) PEAK=149.7 ;;
        *H100*|*H200*|*GH200*) PEAK=989 ;;
        *A100*) PEAK=312 ;;
        *L40S*) PEAK=362 ;;
        *) PEAK=0 ;;
    esac
    step "GPU: $GPU (sm_$CC), dense bf16 peak ${PEAK} TFLOP/s"
else
    step "no GPU found (nvidia-smi missing or no device): the script builds, then stops"
fi

# ---- 2. libraries ----
want_pc="yaml-0.1 jansson libpcre2-8 libutf8proc libxxhash openblas criterion"
if [ -z "${FORCE_DEBS:-}" ] && pkg-config --exists $want_pc 2>/dev/null; then
    step "libraries: the system's (pkg-config finds them)"
else
    ls "$DEBS"/*.deb >/dev/null 2>&1 ||
        die "pkg-config lacks some of: $want_pc, and $DEBS holds no .deb files: run" \
            "tests/gpu/fetch-debs.sh on a machine with apt and carry build-gpu-debs"
    SYS=$WORK/sysroot
    step "libraries: unpacking $(ls "$DEBS"/*.deb | wc -l) .deb files into $SYS"
    rm -rf "$SYS" && mkdir -p "$SYS"
    for f in "$DEBS"/*.deb; do dpkg -x "$f" "$SYS" || die "dpkg -x $f failed"; done
    ML=$SYS/usr/lib/x86_64-linux-gnu
    # links Debian makes with update-alternatives at install time
    [ -e "$ML/pkgconfig/hdf5.pc" ] || ln -sf hdf5-openmpi.pc "$ML/pkgconfig/hdf5.pc"
    if [ ! -e "$ML/pkgconfig/openblas.pc" ]; then
        pc=$(find "$ML" -name 'openblas*.pc' | head -1)
        [ -n "$pc" ] && ln -sf "$pc" "$ML/pkgconfig/openblas.pc"
    fi
    for lib in libopenblas.so libopenblas.so.0 libblas.so.3 liblapack.so.3; do
        if [ ! -e "$ML/$lib" ]; then
            hit=$(find "$ML" -path '*openblas*' -name "$lib" | head -1)
            [ -n "$hit" ] && ln -sf "$hit" "$ML/$lib"
        fi
    done
    # dynamic linking only: drop Requires.private (Criterion's would want four more -dev's)
    find "$SYS" -name '*.pc' -exec sed -i '/^Requires.private/d' {} +
    [ -e "$SYS/usr/bin/mpicc" ] || ln -sf mpicc.openmpi "$SYS/usr/bin/mpicc"
    [ -e "$SYS/usr/bin/mpirun" ] || ln -sf mpirun.openmpi "$SYS/usr/bin/mpirun"
    export PKG_CONFIG_SYSROOT_DIR=$SYS
    export PKG_CONFIG_LIBDIR=$ML/pkgconfig:$SYS/usr/share/pkgconfig:$ML/openmpi/lib/pkgconfig
    export PATH=$SYS/usr/bin:$PATH
    libs=$ML:$ML/openmpi/lib:$ML/hdf5/openmpi:$ML/openblas-pthread
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LIBRARY_PATH=$LD_LIBRARY_PATH
    inc=$SYS/usr/include:$SYS/usr/include/x86_64-linux-gnu:$SYS/usr/include/hdf5/openmpi
    export CPATH=$inc:$ML/openmpi/include${CPATH:+:$CPATH}
    export OPAL_PREFIX=$SYS/usr  # Open MPI finds its components under the moved prefix
    pkg-config --exists $want_pc || die "the unpacked libraries are incomplete:" \
        "$(for p in $want_pc; do pkg-config --exists $p || echo -n "$p "; done)"
fi

# ---- 3. build ----
if [ -n "$CC" ] && [ "$CC" != 86 ] && [ "$CC" != 90 ]; then
    export NVCC_APPEND_FLAGS="-gencode=arch=compute_$CC,code=sm_$CC"
    step "adding sm_$CC to the build's sm_86 and sm_90"
fi
step "building in $BUILD"
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" -Dcuda=enabled -Dbuildtype=release > "$OUT/meson-setup.log" 2>&1 ||
        { tail -30 "$OUT/meson-setup.log"; die "meson setup failed ($OUT/meson-setup.log)"; }
fi
ninja -C "$BUILD" rubric tests/test_kernels_cuda tests/gpu_train_step bench/bench_attention \
    > "$OUT/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$OUT/build.log" | head -30; die "the build failed ($OUT/build.log)"; }
missing=$(ldd "$BUILD/rubric" "$BUILD/tests/test_kernels_cuda" | grep "not found" | sort -u)
[ -z "$missing" ] || die "libraries the binaries cannot find (add their packages to" \
    "tests/gpu/fetch-debs.sh): $missing"
step "built: $("$BUILD/rubric" --version)"
if [ -z "$GPU" ]; then
    echo "check.sh: NO GPU FOUND: built only; no kernel check, training or scoring was run."
    exit 3
fi

# ---- 4. kernel checks ----
step "kernel checks (test_kernels_cuda)"
"$BUILD/tests/test_kernels_cuda" --verbose --jobs 4 > "$OUT/kernels.log" 2>&1
KRC=$?
grep -E "^\[(PASS|FAIL|SKIP|ERR)|Synthesis|Assertion|assert" "$OUT/kernels.log" | head -60
case $KRC in
    0) KERNELS="all passed" ;;
    77) KERNELS="SKIPPED (the binary found no GPU)" ;;
    *) KERNELS="FAILED (exit $KRC, $OUT/kernels.log)" ;;
esac

# ---- 4b. attention alone: fp32 and bf16 (tensor cores) against torch's SDPA ----
step "attention benchmark (bench/bench_attention.py: rubric vs torch SDPA)"
ATT_TABLE=$(timeout 180 python3 bench/bench_attention.py --build "$BUILD" --threads 8 \
    --n-seg 1 --seq 256 2>&1) || ATT_TABLE="attention benchmark failed: $ATT_TABLE"
echo "$ATT_TABLE" | tee "$OUT/attention.txt"

# ---- 4c. the attention checks under compute-sanitizer: out-of-bounds and shared-memory races
# (what the host emulator cannot see), when the toolkit has it ----
SANITIZER="not run (no compute-sanitizer)"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$CS" ] && [ "$KRC" != 77 ]; then
    SANITIZER=""
    for tool in memcheck racecheck; do
        step "compute-sanitizer --tool $tool on the attention checks"
        timeout 240 "$CS" --tool "$tool" --target-processes all --error-exitcode 9 \
            "$BUILD/tests/test_kernels_cuda" --jobs 1 --filter 'kernels_cuda/attention_*' \
            > "$OUT/sanitizer-$tool.log" 2>&1
        src=$?
        tail -3 "$OUT/sanitizer-$tool.log"
        case $src in
            0) SANITIZER="$SANITIZER $tool clean;" ;;
            124) SANITIZER="$SANITIZER $tool timed out;" ;;
            *) SANITIZER="$SANITIZER $tool FOUND ERRORS (exit $src, sanitizer-$tool.log);" ;;
        esac
    done
fi

# ---- 5. training: a random model with Qwen3-0.6B's shape ----
MODEL=$WORK/qwen3-0.6b-random
if [ ! -f "$MODEL/config.json" ]; then
    step "writing the random model $MODEL"
    # --force: a folder left by an interrupted earlier write (no config.json yet) is ours
    "$BUILD/rubric" init-model --force --out "$MODEL" --type qwen3 --hidden 1024 --layers 28 \
        --heads 16 --kv-heads 8 --head-dim 128 --intermediate 3072 --vocab 151936 \
        --rope-theta 1000000 --tie --seed 1 > "$OUT/init-model.log" 2>&1 ||
        { tail -5 "$OUT/init-model.log"; die "rubric init-model failed"; }
fi
train() { # $1: label, $2: steps; RUBRIC_CUDA_GEMM chooses the GEMMs' compute type
    step "training $2 steps ($1): $NSEQ x $SEQ tokens, LoRA r 16"
    timeout 240 "$BUILD/tests/gpu_train_step" "$MODEL" cuda "$2" "$SEQ" "$NSEQ" 16 \
        > "$OUT/train-$1.txt" 2> "$OUT/train-$1.log" || { tail -5 "$OUT/train-$1.log"; return 1; }
    cat "$OUT/train-$1.txt"
}
kv() { grep -o "$2=[^ ]*" "$1" 2>/dev/null | head -1 | cut -d= -f2; }
RUBRIC_CUDA_GEMM=fp32 train fp32 "$STEPS" || echo "check.sh: training (fp32) failed: $OUT/train-fp32.log"
for mode in tf32 bf16; do
    RUBRIC_CUDA_GEMM=$mode train $mode 10 ||
        echo "check.sh: training ($mode) failed: $OUT/train-$mode.log"
done

# ---- 5b. rubric train --backend cuda against --backend cpu ----
E2E=$WORK/train-e2e
rm -rf "$E2E" && mkdir -p "$E2E"
step "rubric train, 8 steps of a small random model: --backend cuda, then --backend cpu"
"$BUILD/rubric" init-model --out "$E2E/model" --hidden 128 --layers 2 --heads 4 --kv-heads 2 \
    --head-dim 32 --intermediate 256 --dtype f32 --seed 3 > "$OUT/e2e-init.log" 2>&1
head -200 data/emobank/train.jsonl > "$E2E/train.jsonl"
head -40 data/emobank/test.jsonl > "$E2E/test.jsonl"
cat > "$E2E/cfg.yml" <<YML
base_model: $E2E/model
datasets:
  - path: $E2E/train.jsonl
    type: alpaca
dataset_prepared_path: $E2E/prepared
val_set_size: 0.1
sequence_len: 256
sample_packing: true
adapter: lora
lora_r: 8
lora_alpha: 16
micro_batch_size: 4
gradient_accumulation_steps: 2
max_steps: 8
learning_rate: 0.002
lr_scheduler: cosine
warmup_steps: 2
max_grad_norm: 1.0
eval_steps: 4
save_steps: 4
seed: 5
bf16: false
score_after_train: $E2E/test.jsonl
YML
E2E_OK=
# cuda with fp32 GEMMs (bf16: false) against cpu; then cuda with the default bf16 GEMMs
for b in cuda cpu cuda-bf16; do
    timeout 240 "$BUILD/rubric" train "$E2E/cfg.yml" --backend "${b%-bf16}" \
        --set "output_dir=$E2E/out-$b" $([ "$b" = cuda-bf16 ] && echo --set bf16=auto) \
        > "$OUT/e2e-train-$b.log" 2>&1 || { tail -8 "$OUT/e2e-train-$b.log"; E2E_OK=failed; }
done
grep -h "backend\|GEMMs" "$OUT/e2e-train-cuda.log" | head -3
E2E_TABLE=$(python3 - "$E2E/out-cuda/metrics.jsonl" "$E2E/out-cpu/metrics.jsonl" \
    "$E2E/out-cuda-bf16/metrics.jsonl" <<'PY' 2>&1
import json, sys
def steps(p):
    out = {}
    for line in open(p):
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r
    return out
g, c, b = steps(sys.argv[1]), steps(sys.argv[2]), steps(sys.argv[3])
worst = worst_b = 0.0
print("| step | loss cuda fp32 | loss cpu | rel. diff | loss cuda bf16 | rel. diff | "
      "grad norm cuda fp32 / cpu |")
print("|---|---|---|---|---|---|---|")
for s in sorted(c):
    d = abs(g[s]["loss"] - c[s]["loss"]) / abs(c[s]["loss"])
    db = abs(b[s]["loss"] - c[s]["loss"]) / abs(c[s]["loss"])
    worst, worst_b = max(worst, d), max(worst_b, db)
    print(f"| {s} | {g[s]['loss']:.6f} | {c[s]['loss']:.6f} | {d:.2e} | {b[s]['loss']:.6f} | "
          f"{db:.2e} | {g[s]['grad_norm']:.5f} / {c[s]['grad_norm']:.5f} |")
ok = worst <= 1e-3 and worst_b <= 5e-2
print(f"worst relative loss difference: fp32 GEMMs {worst:.2e} (bound 1e-3), bf16 GEMMs "
      f"{worst_b:.2e} (bound 5e-2): {'PASS' if ok else 'FAIL'}")
PY
)
echo "$E2E_TABLE"
if [ -n "$E2E_OK" ] || ! grep -q "PASS" <<< "$E2E_TABLE"; then E2E_OK=failed; else E2E_OK=passed; fi
[ -f "$E2E/out-cuda/predictions-test.jsonl" ] || E2E_OK="$E2E_OK (no score_after_train output)"

# ---- 6. scoring ----
step "scoring the EmoBank demo rows with --backend cuda"
cat data/emobank/train.jsonl data/emobank/test.jsonl > "$WORK/rows.jsonl"
NROWS=$(wc -l < "$WORK/rows.jsonl")
rm -f "$WORK/preds.jsonl"*
S0=$(date +%s.%N)
if timeout 180 "$BUILD/rubric" score --model "$MODEL" --input "$WORK/rows.jsonl" \
        --output "$WORK/preds.jsonl" --backend cuda > "$OUT/score.log" 2>&1; then
    S1=$(date +%s.%N)
    ROWS_S=$(awk -v n="$NROWS" -v a="$S0" -v b="$S1" 'BEGIN { printf "%.1f", n / (b - a) }')
else
    tail -5 "$OUT/score.log"
    ROWS_S="failed ($OUT/score.log)"
fi

# ---- 7. the table ----
FMT="| %-22s | %10s | %10s | %8s | %12s | %12s |\n"
row() { # $1 label, $2 file
    local ms tps tf mem mfu l0
    ms=$(kv "$2" ms_per_step); tps=$(kv "$2" tokens_per_s); tf=$(kv "$2" tflops)
    mem=$(kv "$2" peak_mib); l0=$(kv "$2" loss0)
    if [ -z "$ms" ]; then printf "$FMT" "$1" failed - - - -; return; fi
    mfu=$(awk -v t="$tf" -v p="$PEAK" \
          'BEGIN { if (p > 0) printf "%.1f%%", 100 * t / p; else print "n/a" }')
    printf "$FMT" "$1" "$ms" "$tps" "$mfu" "$mem MiB" "$l0"
}
{
    echo
    echo "GPU check: $GPU (sm_$CC), $(date -u '+%Y-%m-%d %H:%M UTC')," \
         "commit $(git rev-parse --short HEAD 2>/dev/null)"
    echo "model: random Qwen3-0.6B shape (28 x 1024, 16/8 heads x 128, MLP 3072, vocab 151936)"
    echo "training: $NSEQ x $SEQ tokens per step, LoRA r 16 on all linear layers, median of $STEPS"
    echo "MFU: useful FLOPs / (time x ${PEAK} TFLOP/s, the card's dense bf16 peak)"
    echo
    printf "$FMT" "training" "ms/step" "tokens/s" "MFU" "peak memory" "step-1 loss"
    printf "|%s|%s|%s|%s|%s|%s|\n" "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..12})" \
        "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..14})" \
        "$(printf -- '-%.0s' {1..14})"
    row "fp32 GEMMs" "$OUT/train-fp32.txt"
    row "TF32 GEMMs (10 steps)" "$OUT/train-tf32.txt"
    row "bf16 GEMMs (10 steps)" "$OUT/train-bf16.txt"
    echo
    echo "kernel checks: $KERNELS"
    echo "compute-sanitizer on attention:$SANITIZER"
    echo
    echo "$ATT_TABLE"
    echo
    echo "rubric train --backend cuda vs cpu (8 steps, small random model): $E2E_OK"
    echo "$E2E_TABLE"
    echo "scoring: $NROWS rows, $ROWS_S rows/s (rubric score --backend cuda, one process)"
    echo "total time: $(( $(date +%s) - T0 )) s"
} | tee "$OUT/table.txt"
[ "$KRC" = 0 ] && [ "$E2E_OK" = passed ] && exit 0
exit 1
