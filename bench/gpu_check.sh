#!/usr/bin/env bash
# bench/gpu_check.sh: everything a GPU machine checks, the same way every time (see ../shared/GPU.md).
#
#   bash bench/gpu_check.sh [build] [test] [sanitize] [bench] [quickbench]    (default: build test bench)
#
# build:      pip install this tree (no build isolation, no downloads), print build_info
# test:       the whole test suite (GPU tests included), log in $OUT/pytest.log
# sanitize:   compute-sanitizer memcheck and racecheck over a subset of the GPU tests ($OUT/sanitize.log)
# bench:      the CUDA benchmark against cuDNN, Markdown table in $OUT/bench_cuda.md, CSV beside it
# quickbench: the same, a few small problems
# Logs go to $OUT when it is set (the device tool), else to ./gpu_check_out.
set -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-90}"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build test bench)
status=0
for step in "${steps[@]}"; do
  echo "=== $step"
  case "$step" in
    build)
      python3 -m pip install --no-build-isolation --no-deps -q . 2>&1 | tail -20 || exit 1
      python3 -c "import fastlstm, pprint; pprint.pprint(fastlstm.build_info())" || exit 1 ;;
    test)
      python3 -m pytest -q tests 2>&1 | tee "$OUT/pytest.log" | tail -40 || status=1 ;;
    sanitize)
      sel="(odd_sizes and float64) or larger_shapes or lengths or every_streaming_tile or non_default_stream"
      for tool in memcheck racecheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest -q -x -p no:cacheprovider \
          tests/test_cuda.py -k "$sel" 2>&1 | tee -a "$OUT/sanitize.log" | tail -15 || status=1
      done ;;
    bench)
      python3 bench/bench_lstm.py --device cuda --markdown --csv "$OUT/bench_cuda.csv" 2>&1 \
        | tee "$OUT/bench_cuda.md" || status=1 ;;
    quickbench)
      python3 bench/bench_lstm.py --device cuda --quick --csv "$OUT/bench_cuda_quick.csv" 2>&1 \
        | tee "$OUT/bench_cuda_quick.txt" || status=1 ;;
    *) echo "unknown step: $step"; exit 2 ;;
  esac
done
exit $status
