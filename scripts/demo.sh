#!/usr/bin/env bash
# demo.sh: set up rubric and run the whole pipeline on the bundled data, on this machine's CPUs.
#
#   bash scripts/demo.sh            # as root on Debian/Ubuntu (or with sudo available)
#
# 1. installs the Debian packages (scripts/install-deps.sh) and builds build/rubric
# 2. makes a tiny random model with Qwen3's architecture and real tokenizer (rubric init-model)
# 3. prepares the bundled EmoBank subset (data/emobank/train.jsonl): validate, deduplicate,
#    tokenize, split off validation rows, pack (rubric prep)
# 4. trains LoRA adapters with 1 coordinator + 2 workers (ZeRO-2 over MPI), evaluating and
#    checkpointing, then scores the held-out data/emobank/test.jsonl with the same ranks and
#    prints the metrics next to the majority baseline (rubric train, jobs/demo_emobank.yml)
# Everything lands in one run folder, named at the end.
#
# Environment: SKIP_DEPS=1 skips step 1's apt-get; BUILD_DIR (default build); RUN_DIR (default
# runs/demo-<date>-<time>, a new folder each run; one given must be new or empty: an earlier
# run's folder is refused before anything is done); WORKERS (default 2); STEPS (default from
# the config: 150).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
RUN_DIR=${RUN_DIR:-runs/demo-$(date +%Y%m%d-%H%M%S)}
WORKERS=${WORKERS:-2}
CONFIG=jobs/demo_emobank.yml
start=$(date +%s)

banner() { printf '\n=== %s\n' "$*"; }

# RUN_DIR: a new or empty folder. An earlier run's (finished or stopped part-way) would mix two
# runs' model, data cache and checkpoints (and train refuses its checkpoints without --resume),
# so it is refused here, before anything is installed, built or written.
if [ -e "$RUN_DIR" ] && { [ ! -d "$RUN_DIR" ] || [ -n "$(ls -A "$RUN_DIR")" ]; }; then
    echo "demo.sh: error: RUN_DIR=$RUN_DIR already exists and is not an empty folder (an" \
         "earlier demo run?); choose a new RUN_DIR, or delete that one (rm -rf '$RUN_DIR')," \
         "or leave RUN_DIR unset for a new runs/demo-<date>-<time>" >&2
    exit 2
fi
if [ "${DEMO_CHECK_ONLY:-0}" = 1 ]; then
    exit 0 # (tests: the RUN_DIR check alone)
fi

# 1. dependencies and the build
if [ "${SKIP_DEPS:-0}" != 1 ]; then
    banner "1/4 setup: dependencies (scripts/install-deps.sh)"
    bash scripts/install-deps.sh
fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
banner "1/4 setup: build ($BUILD_DIR)"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    meson setup "$BUILD_DIR" -Dbuildtype=release
fi
ninja -C "$BUILD_DIR"
RUBRIC=$BUILD_DIR/rubric
"$RUBRIC" --version

# mpirun: as root it needs to be told so; more ranks than cores need --oversubscribe. One
# thread per rank, and idle OpenMP threads sleep instead of spinning against OpenBLAS.
mpirun_args=(--oversubscribe -np $((WORKERS + 1)) -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive)
if [ "$(id -u)" -eq 0 ]; then
    mpirun_args=(--allow-run-as-root "${mpirun_args[@]}")
fi
sets=(--set "base_model=$RUN_DIR/model" --set "output_dir=$RUN_DIR"
      --set "dataset_prepared_path=$RUN_DIR/prepared")
if [ -n "${STEPS:-}" ]; then
    sets+=(--set "max_steps=$STEPS")
fi

# 2. the model: Qwen3's architecture at a size that trains on 2 cores, the real tokenizer.
# Embeddings at std 0.25 rather than 0.02: the frozen tied embeddings of a random model at 0.02
# bound its logits to about +-1, so no adapter could lower its loss far below ln(vocab).
banner "2/4 model: rubric init-model -> $RUN_DIR/model"
mkdir -p "$RUN_DIR"
"$RUBRIC" init-model --out "$RUN_DIR/model" --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
    --head-dim 16 --intermediate 192 --embed-std 0.25 --seed 1

# 3. the data
banner "3/4 data: rubric prep $CONFIG"
"$RUBRIC" prep "$CONFIG" "${sets[@]}"

# 4. training, then scoring of the held-out rows by the same ranks
banner "4/4 train + score: mpirun -np $((WORKERS + 1)) rubric train $CONFIG"
mpirun "${mpirun_args[@]}" "$RUBRIC" train "$CONFIG" "${sets[@]}" 2>&1 | tee "$RUN_DIR/train.log"

elapsed=$(($(date +%s) - start))
banner "done in $((elapsed / 60))m$((elapsed % 60))s: everything is in $RUN_DIR"
ls -1 "$RUN_DIR"
cat <<MSG

  checkpoints     $RUN_DIR/checkpoint-*.h5        (rubric inspect FILE, h5ls, h5dump)
  step log        $RUN_DIR/metrics.jsonl          (one JSON row per step and evaluation)
  predictions     $RUN_DIR/predictions-test.jsonl
  metrics         $RUN_DIR/predictions-test.metrics.json
  console log     $RUN_DIR/train.log

This model is tiny and random before training: it learns the answer format and the score
distribution, not the emotions. Expect it near the majority baseline (answering 3 3 3), not above.
MSG
