#!/usr/bin/env bash
# Build everything the first GPU machine needs into one folder (and a .tar.gz
# beside it): the voxdiff binary, every test executable, and gpu-check.sh.
# Run it on a build machine (Rust, network); copy the tarball to the GPU
# machine (no network, no Rust needed: the kernels are embedded as PTX and
# CUBIN in the binaries), unpack it and run `./gpu-check.sh` in it.
#
#   scripts/gpu-bundle.sh [OUT_DIR]        # default: target/gpu-bundle
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/gpu-bundle}"
./scripts/install-cuda-toolchain.sh
export VOXDIFF_REQUIRE_NVRTC=1
cargo build --release --bin voxdiff
# The test executables cargo builds, from its JSON messages.
mapfile -t tests < <(cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + "\t" + m["executable"])
')
rm -rf "$out"
mkdir -p "$out/tests"
cp target/release/voxdiff "$out/"
cp scripts/gpu-check.sh "$out/"
for t in "${tests[@]}"; do
    name="${t%%$'\t'*}"
    exe="${t#*$'\t'}"
    cp "$exe" "$out/tests/$name"
done
# The release profile keeps debug info (for profiles and backtraces here);
# the bundle does not need it (3.9 GB → a few hundred MB).
if command -v strip > /dev/null; then
    strip --strip-debug "$out/voxdiff" "$out"/tests/*
fi
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || echo unknown > "$out/COMMIT"
tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
echo "gpu bundle: $out (${#tests[@]} test executables) and $out.tar.gz"
