#!/usr/bin/env bash
# Installs the CUDA 13.0 compile toolchain voxdiff builds its kernels with —
# NVRTC (libnvrtc), the CUDA headers (runtime + crt) and ptxas — from NVIDIA's
# PyPI wheels into the git-ignored .toolchain/cuda of this checkout, and the
# SASS disassembler nvdisasm the tests read the CUBINs with into
# .toolchain/nvdisasm.
#
# Idempotent and fast when already installed (a stamp file names the pinned
# versions), so the test script calls it at the start of every run.
# build.rs and the tests find the result at .toolchain/cuda/nvidia/cu13, or at
# $VOXDIFF_CUDA_ROOT when that is set (a directory with lib/ or lib64/,
# include/ and bin/, e.g. /usr/local/cuda).
#
# The versions are pinned to 13.0.x: PTX from NVRTC 13.0 (PTX ISA 9.0) loads on
# every driver from CUDA 13.0 on.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.toolchain/cuda"
pins=(
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-nvcc==13.0.88"
)
stamp="$dest/.voxdiff-toolchain-stamp"
want="${pins[*]}"
cu="$dest/nvidia/cu13"

# nvdisasm, apart from the compilers (its own folder and stamp, so adding it
# leaves an installed compiler toolchain alone): the tests disassemble the
# embedded CUBINs with it. It has no 13.0 wheel; 13.2 reads the 13.0 CUBINs.
disasm_pin="nvidia-cuda-nvdisasm==13.2.86"
disasm_dest="$root/.toolchain/nvdisasm"
disasm_stamp="$disasm_dest/.voxdiff-toolchain-stamp"
disasm="$disasm_dest/nvidia/cu13/bin/nvdisasm"

find_python() {
  py="${PYTHON:-}"
  if [[ -z "$py" ]]; then
    for cand in python3 python; do
      if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
    done
  fi
  if [[ -z "$py" ]] || ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "cuda toolchain: needs python3 with pip to install the NVIDIA wheels" >&2
    exit 1
  fi
}

# pip_into DEST PIN...: the wheels, without dependencies, into DEST.
pip_into() {
  local into="$1"
  shift
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$into" "$@"
}

if [[ -f "$disasm_stamp" && "$(cat "$disasm_stamp")" == "$disasm_pin" && -x "$disasm" ]]; then
  echo "cuda toolchain: nvdisasm already installed ($disasm_pin)"
else
  find_python
  echo "cuda toolchain: installing $disasm_pin into $disasm_dest"
  rm -rf "$disasm_dest"
  mkdir -p "$disasm_dest"
  pip_into "$disasm_dest" "$disasm_pin"
  if [[ ! -x "$disasm" ]]; then
    echo "cuda toolchain: the wheel did not provide $disasm" >&2
    exit 1
  fi
  echo "$disasm_pin" > "$disasm_stamp"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$cu/lib/libnvrtc.so.13" \
      && -x "$cu/bin/ptxas" && -f "$cu/include/cuda_bf16.h" ]]; then
  echo "cuda toolchain: already installed in $cu ($want)"
  exit 0
fi

find_python
echo "cuda toolchain: installing $want into $dest"
rm -rf "$dest"
mkdir -p "$dest"
pip_into "$dest" "${pins[@]}"

for f in "$cu/lib/libnvrtc.so.13" "$cu/bin/ptxas" "$cu/include/cuda_bf16.h"; do
  if [[ ! -e "$f" ]]; then
    echo "cuda toolchain: the wheels did not provide $f" >&2
    exit 1
  fi
done
echo "$want" > "$stamp"
# build.rs watches the stamp; touching build.rs makes an existing build
# directory notice a toolchain that appeared after its last build.
touch "$root/build.rs"
echo "cuda toolchain: ready ($("$cu/bin/ptxas" --version | tail -1))"
