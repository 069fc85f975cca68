#!/usr/bin/env bash
# .ci/manylinux_cuda.sh: cibuildwheel's before-all inside the manylinux_2_28 image (AlmaLinux 8): the
# CUDA compiler and static runtime from NVIDIA's RHEL 8 repository, so CMake builds the CUDA kernels
# into every wheel. FASTLSTM_CUDA=0 skips it (CPU-only wheels); an nvcc already on CUDACXX is kept.
set -euo pipefail
if [ "${FASTLSTM_CUDA:-1}" = "0" ] || [ -x "${CUDACXX:-/nonexistent}" ]; then
  exit 0
fi
version="${FASTLSTM_CUDA_VERSION:-13-0}"
dnf install -y dnf-plugins-core
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y "cuda-nvcc-$version" "cuda-cudart-devel-$version"
ln -sfn "/usr/local/cuda-${version/-/.}" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
