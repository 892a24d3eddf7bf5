#!/bin/bash
# jobs/train_4xa40.sh: QLoRA training of Qwen3-1.7B on one node with 4 A40s.
#
#   sbatch jobs/train_4xa40.sh                      # jobs/qwen3_1.7b_qlora.yml
#   CONFIG=my.yml sbatch jobs/train_4xa40.sh        # another config (--export=ALL default)
#
# 5 tasks: rank 0 is rubric's coordinator (data, logs, checkpoints; no GPU), ranks 1-4 are the
# ZeRO-2 workers, one A40 each (slurm/gpu_bind.sh). Ten minutes before the time limit Slurm
# sends SIGUSR1 to this script, which passes it to rubric: the coordinator writes a checkpoint
# and requeues the job (--requeue), and the next run resumes from the newest valid checkpoint
# in output_dir. Preemption (SIGTERM) does the same.
#
# Environment: CONFIG (the YAML), RUBRIC (the binary, default build/rubric), LAUNCHER (mpirun,
# default, or srun when Slurm's MPI plugin matches the MPI rubric was built with),
# RUBRIC_BACKEND=cpu to train on CPUs (then override the GPU request: sbatch --gres=none).
#SBATCH --job-name=rubric-train
#SBATCH --nodes=1
#SBATCH --ntasks=5
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:a40:4
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
mkdir -p logs
CONFIG=${CONFIG:-jobs/qwen3_1.7b_qlora.yml}
RUBRIC=${RUBRIC:-build/rubric}
LAUNCHER=${LAUNCHER:-mpirun}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

echo "== rubric train: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on" \
     "$(hostname) at $(date -Is): $CONFIG"
slurm/check_layout.sh

# the launcher runs in the background so this shell can pass SIGUSR1/SIGTERM to rubric
if [[ "$LAUNCHER" == srun ]]; then
    srun --kill-on-bad-exit=1 --cpu-bind=none slurm/gpu_bind.sh \
        "$RUBRIC" train "$CONFIG" --requeue "$@" &
else
    exports=(-x OMP_NUM_THREADS)
    [[ -n "${RUBRIC_BACKEND:-}" ]] && exports+=(-x RUBRIC_BACKEND)
    # shellcheck disable=SC2086 # RUBRIC_MPIRUN_ARGS is a list of options
    mpirun ${RUBRIC_MPIRUN_ARGS:-} -np "$SLURM_NTASKS" "${exports[@]}" \
        slurm/gpu_bind.sh "$RUBRIC" train "$CONFIG" --requeue "$@" &
fi
launcher=$!
forward() { echo "== signal $1: asking rubric to checkpoint"; kill -USR1 "$launcher" || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# wait returns early when a trapped signal arrives: keep waiting for the launcher
rc=0
while true; do
    wait "$launcher" && rc=0 || rc=$?
    kill -0 "$launcher" 2>/dev/null || break
done
echo "== rubric train: exit $rc at $(date -Is)"
exit "$rc"
