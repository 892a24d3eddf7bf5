#!/bin/bash
# slurm/gpu_bind.sh: run a command with this task's GPU, for `rubric` under srun or mpirun.
#
#   srun   slurm/gpu_bind.sh build/rubric train CONFIG ...
#   mpirun slurm/gpu_bind.sh build/rubric train CONFIG ...
#
# Rank 0 is rubric's coordinator: it gets no GPU. Worker k (global rank k >= 1) on a node gets
# the node-local GPU number (local rank - 1) when the coordinator shares its node, else (local
# rank), taken from the GPUs Slurm gave the job (the CUDA_VISIBLE_DEVICES Slurm set, else
# SLURM_STEP_GPUS / SLURM_JOB_GPUS), so every worker sees exactly one device as device 0.
# RUBRIC_BACKEND=cpu (or a job without GPUs) leaves CUDA_VISIBLE_DEVICES empty for everyone.
set -euo pipefail

rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-0}}}
local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${MPI_LOCALRANKID:-${SLURM_LOCALID:-0}}}
gpus=${CUDA_VISIBLE_DEVICES:-${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}}

if [[ "${RUBRIC_BACKEND:-auto}" == cpu || -z "$gpus" || "$rank" == 0 ]]; then
    export CUDA_VISIBLE_DEVICES=""
else
    IFS=, read -r -a list <<< "$gpus"
    # ranks are placed in blocks: on the coordinator's node global rank == local rank, and
    # the workers there start at local rank 1
    if (( rank == local_rank )); then
        index=$((local_rank - 1))
    else
        index=$local_rank
    fi
    if (( index >= ${#list[@]} )); then
        echo "rubric: error: [rank $rank] local worker $index has no GPU: the job has" \
             "${#list[@]} GPU(s) ($gpus) on $(hostname); request one GPU per worker" >&2
        exit 2
    fi
    export CUDA_VISIBLE_DEVICES=${list[$index]}
fi
exec "$@"
