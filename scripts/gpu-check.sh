#!/usr/bin/env bash
# The first run on a GPU machine, in one go (about 8 minutes on one GPU):
#  1. `voxdiff info`: driver, GPU, which code image (CUBIN, PTX, NVRTC) loaded;
#  2. every test executable that runs kernels, on the GPU
#     (VOXDIFF_TEST_DEVICE=cuda, CUDA_LAUNCH_BLOCKING=1), each checked against
#     the CPU backend as in CI; every failing test then rerun alone;
#  3. compute-sanitizer racecheck, synccheck and memcheck on the convolution
#     and norm tests, where compute-sanitizer is on the PATH;
#  4. `voxdiff bench` (every op case) and `voxdiff bench --step` at the paper
#     size (UNet 32/64/128/256, 1×32×128×128, 14 classes);
#  5. a 60-step training run at the paper size on a phantom.
# Everything lands in one folder: a log per stage, summary.txt, summary.json.
#
# It needs no network and no Rust: run it inside the folder that
# scripts/gpu-bundle.sh makes (voxdiff, tests/, this script):
#
#   ./gpu-check.sh [OUT_DIR]                 # default: gpu-check-<date>
#
# Environment: VOXDIFF_GPU_CHECK_DEVICE (default cuda; `emu` or `cpu` run the
# same flow without a GPU — the tests then on the emulator, the benchmarks and
# the training on that device — as CI does on a small scale),
# VOXDIFF_GPU_CHECK_TESTS (space-separated test names instead of all),
# VOXDIFF_GPU_CHECK_DIMS (training/bench extents, default "32 128 128"),
# VOXDIFF_GPU_CHECK_STEPS (training steps, default 60),
# VOXDIFF_GPU_CHECK_REPS (timed repetitions of each bench case, default 3).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
device="${VOXDIFF_GPU_CHECK_DEVICE:-cuda}"
dims="${VOXDIFF_GPU_CHECK_DIMS:-32 128 128}"
steps="${VOXDIFF_GPU_CHECK_STEPS:-60}"
reps="${VOXDIFF_GPU_CHECK_REPS:-3}"
voxdiff="$here/voxdiff"
summary="$out/summary.txt"
: > "$summary"
json_stages=()

note() { echo "$*" | tee -a "$summary"; }
# stage NAME STATUS SECONDS DETAIL
stage() {
    note "$(printf '%-12s %-6s %5ss  %s' "$1" "$2" "$3" "$4")"
    json_stages+=("{\"stage\": \"$1\", \"status\": \"$2\", \"seconds\": $3, \"detail\": \"${4//\"/\'}\"}")
}

write_json() {
    {
        echo "{"
        echo "  \"device\": \"$device\","
        echo "  \"commit\": \"$(cat "$here/COMMIT" 2>/dev/null || echo unknown)\","
        echo "  \"stages\": ["
        for i in "${!json_stages[@]}"; do
            sep=","
            [ "$i" -eq $((${#json_stages[@]} - 1)) ] && sep=""
            echo "    ${json_stages[$i]}$sep"
        done
        echo "  ]"
        echo "}"
    } > "$out/summary.json"
}
trap write_json EXIT

[ -x "$voxdiff" ] || { echo "gpu-check: no voxdiff binary next to this script ($voxdiff); run scripts/gpu-bundle.sh first" >&2; exit 2; }
note "voxdiff gpu check: device $device, out $out, commit $(cat "$here/COMMIT" 2>/dev/null || echo unknown)"

# 1. info
t0=$SECONDS
if "$voxdiff" info > "$out/info.txt" 2>&1; then s=ok; else s=FAIL; fi
cuda_line="$(grep -m1 'CUDA driver:' "$out/info.txt" | sed 's/^ *//')"
if [[ "$device" == cuda* ]] && ! grep -q 'CUDA driver: present' "$out/info.txt"; then
    stage info FAIL $((SECONDS - t0)) "${cuda_line:-voxdiff info failed (info.txt)}"
    note "gpu-check: device $device is not usable here; nothing else was run"
    exit 2
fi
stage info "$s" $((SECONDS - t0)) "${cuda_line:-see info.txt}"

# 2. tests on the device
if [ -n "${VOXDIFF_GPU_CHECK_TESTS:-}" ]; then
    read -r -a names <<< "$VOXDIFF_GPU_CHECK_TESTS"
else
    names=()
    for t in "$here"/tests/*; do
        n="$(basename "$t")"
        case "$n" in
            # Emulator-only, or need the CUDA compiler toolchain: CI covers them.
            emu_*|toolchain|sass|conv_ptx) ;;
            *) names+=("$n") ;;
        esac
    done
fi
# A cuda[:N] device runs the tests on that GPU; anything else on the emulator.
case "$device" in
    cuda*) export VOXDIFF_TEST_DEVICE="$device" ;;
    *) unset VOXDIFF_TEST_DEVICE ;;
esac
export CUDA_LAUNCH_BLOCKING=1
passed=0
failed=0
failures=()
t0=$SECONDS
for n in "${names[@]}"; do
    exe="$here/tests/$n"
    [ -x "$exe" ] || { note "tests: $n is not in the bundle"; failed=$((failed + 1)); continue; }
    if "$exe" > "$out/test-$n.log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        # Rerun each failing test alone, one thread, so its output is its own.
        while read -r f; do
            [ -n "$f" ] || continue
            failures+=("$n::$f")
            "$exe" --exact "$f" --test-threads=1 > "$out/rerun-$n-${f//[^A-Za-z0-9_]/_}.log" 2>&1 &&
                note "tests: $n::$f failed in the batch and PASSED alone (order or concurrency dependent)"
        done < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$out/test-$n.log")
    fi
done
s=ok
[ "$failed" -eq 0 ] || s=FAIL
stage tests "$s" $((SECONDS - t0)) "$passed executables passed, $failed failed${failures:+: ${failures[*]}}"

# 3. compute-sanitizer
t0=$SECONDS
if [[ "$device" == cuda* ]] && command -v compute-sanitizer > /dev/null; then
    s=ok
    for tool in racecheck synccheck memcheck; do
        for n in gpu_conv gpu_norm; do
            [ -x "$here/tests/$n" ] || continue
            if ! timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 1 "$here/tests/$n" --test-threads=1 \
                > "$out/sanitizer-$tool-$n.log" 2>&1; then
                s=FAIL
                note "sanitizer: $tool on $n reported errors (sanitizer-$tool-$n.log)"
            fi
        done
    done
    stage sanitizer "$s" $((SECONDS - t0)) "racecheck, synccheck, memcheck on gpu_conv and gpu_norm"
else
    stage sanitizer skip 0 "compute-sanitizer not on the PATH or no GPU"
fi

# 4. benchmarks
t0=$SECONDS
# shellcheck disable=SC2086
if "$voxdiff" bench --device "$device" --dims $dims --reps "$reps" --json "$out/bench-ops.json" > "$out/bench-ops.txt" 2>&1 &&
    "$voxdiff" bench --step --device "$device" --dims $dims --reps "$reps" --json "$out/bench-step.json" \
        > "$out/bench-step.txt" 2>&1; then
    s=ok
else
    s=FAIL
fi
stage bench "$s" $((SECONDS - t0)) "$(grep -m1 'ImgX' "$out/bench-step.txt" | tr -s ' ' | tr -d '\n')"

# 5. training
t0=$SECONDS
read -r d h w <<< "$dims"
rm -rf "$out/train"
if timeout 300 "$voxdiff" train seg --run "$out/train" --device "$device" --steps "$steps" --quiet \
    --set data.source='"phantom"' --set "data.phantom.dims=[$d,$h,$w]" --set data.phantom_cases=2 \
    --set "data.patch=[$d,$h,$w]" --set train.log_every=1 --set train.checkpoint_every=1000 \
    > "$out/train.txt" 2>&1; then
    s=ok
else
    s=FAIL
fi
stage train "$s" $((SECONDS - t0)) "$steps steps at $dims; log in train/log.jsonl"

note "summary: $summary and $out/summary.json"
grep -q " FAIL " "$summary" && exit 1
exit 0
