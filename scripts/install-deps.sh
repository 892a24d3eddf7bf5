#!/usr/bin/env bash
# install-deps.sh: install what rubric needs to build and test, idempotently.
#
# On Debian/Ubuntu: one apt-get line (packages already there are left as they are). Runs as
# root, or through sudo when that is available. Without apt-get it prints the equivalents an
# HPC cluster usually has as environment modules, and exits 0 when everything is found, 1 when
# something is missing.
#
# CUDA (nvcc, cuBLAS, NCCL) is not installed here: it comes with the NVIDIA driver stack or a
# `module load cuda`; rubric builds without it (CPU backend only).
set -euo pipefail

packages=(
    build-essential git python3 pkg-config meson ninja-build
    libopenmpi-dev openmpi-bin
    libhdf5-openmpi-dev hdf5-tools
    libcriterion-dev
    libopenblas-dev
    libpcre2-dev libutf8proc-dev libjansson-dev libxxhash-dev libyaml-dev
)

# --with-slurm: also a local Slurm (slurmctld, slurmd, munge) for the Slurm test in CI.
# --with-python: also the Python packages some tests read results with (h5py, numpy, PyYAML),
# through pip.
with_slurm=0
with_python=0
for arg in "$@"; do
    case "$arg" in
        --with-slurm) with_slurm=1 ;;
        --with-python) with_python=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-deps.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done
if [ $with_slurm = 1 ]; then
    packages+=(slurm-wlm munge)
fi

# pkg-config names meson looks for (and the commands), to check a non-apt system.
pkgconfig_names=(ompi-c hdf5 yaml-0.1 criterion openblas jansson libpcre2-8 libutf8proc
                 libxxhash)

hpc_modules() {
    cat <<'MODULES'
No apt-get here. On an HPC cluster, the usual environment modules are (names vary by site;
`module avail` / `module spider NAME` shows yours):
  module load gcc            # C11 compiler (GCC >= 10)
  module load openmpi        # Open MPI 4.x (or the site MPI; rubric needs MPI_THREAD_FUNNELED)
  module load hdf5/parallel  # HDF5 1.10+ built with MPI (parallel I/O)
  module load openblas       # or the site BLAS with a cblas.h
  module load cuda           # optional: nvcc 12+, cuBLAS; NCCL is often `module load nccl`
  module load meson ninja    # or: pip install --user meson ninja
and from Spack (spack install NAME) when a module is missing:
  criterion libyaml jansson pcre2 utf8proc xxhash
Then set PKG_CONFIG_PATH so that `pkg-config --exists` finds each of:
MODULES
    printf '  %s\n' "${pkgconfig_names[@]}"
}

check_pkgconfig() {
    local missing=0
    for name in "${pkgconfig_names[@]}"; do
        if pkg-config --exists "$name" 2>/dev/null; then
            echo "  found   $name"
        else
            echo "  MISSING $name"
            missing=1
        fi
    done
    for cmd in meson ninja mpirun mpicc; do
        if command -v "$cmd" >/dev/null; then
            echo "  found   $cmd"
        else
            echo "  MISSING $cmd"
            missing=1
        fi
    done
    return $missing
}

if ! command -v apt-get >/dev/null; then
    hpc_modules
    echo
    echo "Checking what is already here:"
    check_pkgconfig && exit 0
    exit 1
fi

# root, or sudo
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "install-deps.sh: needs root (or sudo) to run apt-get install" >&2
        exit 1
    fi
fi

# only what is missing, so a second run does nothing and needs no network
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps.sh: all ${#packages[@]} packages are installed"
else
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ $with_python = 1 ]; then
    if python3 -c 'import h5py, numpy, yaml' 2>/dev/null; then
        echo "install-deps.sh: h5py, numpy and PyYAML are installed"
    elif python3 -m pip --version >/dev/null 2>&1; then
        echo "install-deps.sh: pip install h5py numpy pyyaml"
        python3 -m pip install -q h5py numpy pyyaml ||
            python3 -m pip install -q --break-system-packages h5py numpy pyyaml
    else
        echo "install-deps.sh: no pip: apt-get install python3-h5py python3-numpy python3-yaml"
        "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
            python3-h5py python3-numpy python3-yaml
    fi
fi
echo "install-deps.sh: done"
