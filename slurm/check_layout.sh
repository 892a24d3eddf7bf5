#!/bin/bash
# slurm/check_layout.sh: check a job's layout before rubric starts (called by jobs/*.sh).
#
# rubric wants one task per worker plus the coordinator (rank 0, no GPU): with G GPUs per node
# on one node, ntasks must be G + 1. A mismatch wastes GPUs or puts two workers on one GPU, so
# it is an error (exit 2) with what to change. RUBRIC_BACKEND=cpu skips the GPU check (CI, CPU
# runs). Prints one line describing the layout.
set -euo pipefail

ntasks=${SLURM_NTASKS:-${SLURM_NPROCS:-}}
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [[ -z "$ntasks" ]]; then
    echo "rubric: error: SLURM_NTASKS is not set: run this inside an sbatch/salloc job" >&2
    exit 2
fi
if (( ntasks < 2 )); then
    echo "rubric: error: $ntasks task(s): rubric needs a coordinator and at least one worker" \
         "(--ntasks=2 or more)" >&2
    exit 2
fi
workers=$((ntasks - 1))
if [[ "${RUBRIC_BACKEND:-auto}" == cpu ]]; then
    echo "layout: $nodes node(s), $ntasks tasks: coordinator + $workers CPU workers"
    exit 0
fi
gpus=${CUDA_VISIBLE_DEVICES:-${SLURM_JOB_GPUS:-${SLURM_STEP_GPUS:-}}}
if [[ -z "$gpus" ]]; then
    echo "rubric: error: the job has no GPUs (no --gres=gpu:...); request one per worker, or" \
         "set RUBRIC_BACKEND=cpu to train on CPUs" >&2
    exit 2
fi
IFS=, read -r -a list <<< "$gpus"
per_node=${#list[@]}
total=$((per_node * nodes))
if (( total != workers )); then
    echo "rubric: error: $workers workers ($ntasks tasks - 1 coordinator) but $total GPU(s)" \
         "($per_node per node x $nodes node(s): $gpus); use --ntasks=$((total + 1)) or" \
         "--gres=gpu:$workers" >&2
    exit 2
fi
echo "layout: $nodes node(s), $ntasks tasks: coordinator + $workers workers, one GPU each ($gpus)"
