#!/usr/bin/env bash
# tests/gpu/fetch-debs.sh: download (apt-get download, no install) the Debian packages that
# tests/gpu/check.sh needs on a lent GPU machine, which has CUDA, a compiler, Python and
# meson/ninja from pip but none of the -dev packages, and no network.
#
# Run it here (Debian 12, amd64) from the source root; it fills build-gpu-debs/ (ignored by
# git, under the 64 MiB a device run may carry). Give that folder in the run's `carry`;
# check.sh unpacks the files with dpkg -x into a private folder and points pkg-config,
# the compiler and the loader at it.
#
# The list: the -dev packages of the build (ENVIRONMENT.md's apt line), their shared
# libraries, and the libraries those load that a CUDA image may lack. Left out on purpose:
# compilers, glibc, the gcc runtime, OpenSSL, zlib/zstd/lzma, systemd's libraries, Perl and
# Python (the machine has them); check.sh's ldd step names any library still missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-$ROOT/build-gpu-debs}

PKGS=(
    # build tools and the -dev packages
    pkgconf pkgconf-bin libpkgconf3 pkg-config
    libopenmpi-dev libhdf5-openmpi-dev libcriterion-dev libopenblas-dev
    libopenblas-pthread-dev libpcre2-dev libutf8proc-dev libjansson-dev libxxhash-dev
    libyaml-dev
    # their shared libraries
    libopenmpi3 openmpi-bin openmpi-common libhdf5-openmpi-103-1 libhdf5-openmpi-hl-100
    libcriterion3 libopenblas0 libopenblas0-pthread libgfortran5 libquadmath0
    libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc2 libjansson4
    libxxhash0 libyaml-0-2
    # what Open MPI loads
    libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7
    libfabric1 libucx0 libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200
    libnl-route-3-200 libmunge2 libnuma1 libltdl7 libpciaccess0
    # what HDF5 loads (libcurl for its read-only S3 driver)
    libsz2 libaec0 libcurl4 libnghttp2-14 librtmp1 libssh2-1 libpsl5 libldap-2.5-0
    libsasl2-2 libsasl2-modules-db libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0
    libkeyutils1 libbrotli1 libidn2-0 libunistring2 libgnutls30 libhogweed6 libnettle8
    libp11-kit0 libtasn1-6
    # what Criterion loads
    libnanomsg5 libgit2-1.5 libhttp-parser2.9 libmbedcrypto7 libmbedtls14 libmbedx509-1
    libffi8
)

mkdir -p "$DEST"
cd "$DEST"
rm -f ./*.deb
apt-get download "${PKGS[@]}" > /dev/null
n=$(ls ./*.deb | wc -l)
echo "fetch-debs: $n packages, $(du -sh . | cut -f1) in $DEST"
echo "carry it to the GPU machine: run(carry=['build-gpu-debs'], command='tests/gpu/check.sh')"
