#!/bin/bash
# tests/slurm/test_slurm.sh: jobs/train_4xa40.sh on a real single-node Slurm (CPU backend).
#
# Starts munged (unless running), slurmctld and slurmd on localhost with a private slurm.conf
# in a temporary folder (SLURM_CONF), submits the job with the GPU request overridden
# (--gres=none, 3 tasks: coordinator + 2 CPU workers, RUBRIC_BACKEND=cpu) on a tiny random
# model and dataset, and checks:
#   1. the job runs to completion (4 steps) and writes its checkpoint
#   2. a second submission (8 steps) resumes from that checkpoint and completes
#   3. SIGUSR1 to the batch script (what --signal=B:USR1@600 sends before the time limit) in the
#      middle of a third job: rubric checkpoints, `scontrol requeue`s the job, and the requeued
#      run resumes from that checkpoint and completes
# Stops the daemons it started by the pids in their pid files. Exit 77 (skipped) when not root
# or Slurm / munge are not installed (apt-get install slurm-wlm).
set -euo pipefail

SRC=${RUBRIC_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
RUBRIC=${RUBRIC_BIN:-$SRC/build/rubric}
for tool in slurmctld slurmd sbatch scontrol sinfo munged; do
    command -v "$tool" >/dev/null || { echo "skip: $tool is not installed"; exit 77; }
done
[[ $(id -u) == 0 ]] || { echo "skip: starting Slurm daemons needs root"; exit 77; }

T=$(mktemp -d /tmp/rubric_slurm_XXXXXX)
export SLURM_CONF=$T/slurm.conf
started_munge=""
cleanup() {
    for f in "$T/slurmd.pid" "$T/slurmctld.pid" ${started_munge:+"$T/munged.pid"}; do
        [[ -s "$f" ]] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 1
    [[ -n "${KEEP:-}" ]] || rm -rf "$T"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*"
    for f in "$T"/job-*.out "$T"/slurmctld.log "$T"/slurmd.log; do
        [[ -f "$f" ]] && { echo "--- $f"; tail -40 "$f"; }
    done
    exit 1
}

# 1. munge, slurmctld, slurmd
if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    munged --force --pid-file="$T/munged.pid" 2>/dev/null || munged --force
    started_munge=1
fi
host=$(hostname)
mkdir -p "$T/state" "$T/spool"
cat > "$SLURM_CONF" <<EOF
ClusterName=rubrictest
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
JobRequeue=1
NodeName=$host CPUs=8 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
slurmctld || fail "slurmctld did not start"
slurmd || fail "slurmd did not start"
for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix)' && break
    sleep 1
done
sinfo -h -o %t | grep -qE '^(idle|mix)' || fail "the node did not become idle: $(sinfo)"

# 2. a tiny model, dataset and config
"$RUBRIC" init-model --out "$T/model" --hidden 32 --layers 2 --heads 2 --kv-heads 1 \
    --head-dim 16 --intermediate 64 --dtype f32 >/dev/null
words=(the essay argues that students should learn science and art every day)
for i in $(seq 40); do
    text=""
    for j in $(seq $((8 + i % 13))); do text+="${words[$(((i * 7 + j * 3) % 11))]} "; done
    printf '{"instruction": "Score the essay.", "input": "%s", "output": "%d %d %d %d"}\n' \
        "$text" $((i % 5 + 1)) $((i % 3 + 1)) $((i % 4 + 2)) $((i % 2 + 3))
done > "$T/train.jsonl"
cat > "$T/cfg.yml" <<EOF
base_model: $T/model
datasets:
  - path: $T/train.jsonl
    type: alpaca
dataset_prepared_path: $T/prepared
val_set_size: 4
sequence_len: 128
adapter: lora
lora_r: 4
lora_alpha: 8
micro_batch_size: 2
gradient_accumulation_steps: 2
num_epochs: 3
learning_rate: 0.002
warmup_steps: 1
eval_steps: 0
save_steps: 2
output_dir: $T/out
EOF

# 3. submit (from the source root: the job script uses slurm/ and jobs/ relative to it)
export CONFIG=$T/cfg.yml RUBRIC=$RUBRIC RUBRIC_BACKEND=cpu
export RUBRIC_MPIRUN_ARGS="--allow-run-as-root --oversubscribe"
submit() {
    (cd "$SRC" && sbatch --parsable --gres=none --ntasks=3 --cpus-per-task=1 --mem=1000 \
        --time=30 --output="$T/job-%j.out" jobs/train_4xa40.sh --set "max_steps=$1" \
        --set "output_dir=$2")
}
wait_job() {
    local state=""
    for _ in $(seq 300); do
        state=$(scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
        case "$state" in
            COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;;
        esac
        sleep 1
    done
    echo "$state"
}

job1=$(submit 4 "$T/out") || fail "sbatch refused the job"
state=$(wait_job "$job1")
[[ "$state" == COMPLETED ]] || fail "job $job1 ended $state"
grep -q "layout: 1 node(s), 3 tasks: coordinator + 2 CPU workers" "$T/job-$job1.out" ||
    fail "no layout line"
grep -q "train: done, 4 steps" "$T/job-$job1.out" || fail "job $job1 did not train 4 steps"
[[ -f "$T/out/checkpoint-4.h5" ]] || fail "no checkpoint-4.h5"
"$RUBRIC" inspect --no-config "$T/out/checkpoint-4.h5" | grep -q "written by    2 workers" ||
    fail "checkpoint-4.h5 does not say 2 workers"
echo "PASS job $job1: 4 steps, checkpoint-4.h5"

job2=$(submit 8 "$T/out") || fail "sbatch refused the second job"
state=$(wait_job "$job2")
[[ "$state" == COMPLETED ]] || fail "job $job2 ended $state"
grep -q "resumed from $T/out/checkpoint-4.h5: step 4" "$T/job-$job2.out" ||
    fail "job $job2 did not resume from checkpoint-4.h5"
grep -q "train: done, 8 steps" "$T/job-$job2.out" || fail "job $job2 did not reach step 8"
[[ -f "$T/out/checkpoint-8.h5" ]] || fail "no checkpoint-8.h5"
echo "PASS job $job2: resumed at step 4, finished at step 8"

job3=$(submit 12 "$T/out3") || fail "sbatch refused the third job"
for _ in $(seq 120); do
    grep -q "^step 2/12" "$T/job-$job3.out" 2>/dev/null && break
    sleep 1
done
grep -q "^step 2/12" "$T/job-$job3.out" || fail "job $job3 did not reach step 2"
scancel --signal=USR1 --batch "$job3"
# a requeued job waits about two minutes before it may start again: let it start now
for _ in $(seq 60); do
    scontrol show job "$job3" | grep -q 'Restarts=1' && break
    sleep 1
done
scontrol update JobId="$job3" StartTime=now 2>/dev/null || true
state=$(wait_job "$job3")
out3=$T/job-$job3.out
[[ "$state" == COMPLETED ]] || fail "job $job3 ended $state"
saved=$(grep -o 'signal 10: checkpoint of step [0-9]*' "$out3" | grep -o '[0-9]*$' | head -1)
[[ -n "$saved" ]] || fail "job $job3: no checkpoint after SIGUSR1"
grep -q "scontrol requeue $job3\` done" "$out3" || fail "job $job3 was not requeued"
grep -q "resumed from $T/out3/checkpoint-$saved.h5: step $saved" "$out3" ||
    fail "the requeued job $job3 did not resume from checkpoint-$saved.h5"
grep -q "train: done, 12 steps" "$out3" || fail "the requeued job $job3 did not finish"
echo "PASS job $job3: SIGUSR1 at step $saved, checkpoint, requeued, resumed, finished"
