#!/usr/bin/env bash
# The test command of the README: installs the pinned CUDA compiler toolchain
# (NVRTC, headers, ptxas from PyPI wheels) into .toolchain/, then runs every
# test in release mode. Tests that need ../shared/data skip visibly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-cuda-toolchain.sh
# With the toolchain installed, a kernel that fails to compile or spills fails the run.
export VOXDIFF_REQUIRE_NVRTC=1
cargo test --release "$@"
