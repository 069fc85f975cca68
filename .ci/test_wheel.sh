#!/usr/bin/env bash
# .ci/test_wheel.sh: install the release wheel into a clean virtual environment and run the test suite
# against the installed package (not the source tree), once per ISA this CPU runs (FASTLSTM_ISA forces
# the kernel set, so every compiled ISA path in the wheel is exercised).
#
#   bash .ci/test_wheel.sh [WHEEL]      (default: the one .ci/release.sh left in dist/wheelhouse/)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
wheel="${1:-$(ls dist/wheelhouse/fastlstm-*.whl)}"
env_dir=$(mktemp -d)
trap 'rm -rf "$env_dir"' EXIT
python3 -m venv "$env_dir/venv"
py="$env_dir/venv/bin/python"
"$py" -m pip install -q --upgrade pip
# binaries only, with no compiler in sight (PATH holds the venv alone): a wheel install must never build
PATH="$env_dir/venv/bin" CC=/bin/false CXX=/bin/false CUDACXX=/bin/false \
  "$py" -m pip install -q --only-binary=:all: "$wheel" pytest
PATH="$env_dir/venv/bin" "$py" -c "import shutil; assert not any(map(shutil.which, ('gcc', 'g++', 'cc', 'nvcc', 'cmake')))"
# run from a directory outside the checkout: `import fastlstm` must find the venv's copy
cd "$env_dir"
"$py" - "$repo" <<'PY'
import sys, fastlstm
assert "site-packages" in fastlstm.__file__ and not fastlstm.__file__.startswith(sys.argv[1]), fastlstm.__file__
print("testing", fastlstm.__file__, fastlstm.__version__, fastlstm.build_info()["isa_supported"])
PY
isas=$("$py" -c "import fastlstm; print(' '.join(fastlstm.build_info()['isa_supported']))")
for isa in $isas; do
  echo "=== FASTLSTM_ISA=$isa"
  FASTLSTM_ISA=$isa "$py" -c "import fastlstm; assert fastlstm.get_isa() == '$isa'"
  FASTLSTM_ISA=$isa "$py" -m pytest -q -p no:cacheprovider --rootdir "$repo" "$repo/tests" 2>&1 | tail -3
done
