"""The build: build_info(), the `fastlstm info` command, and ISA isolation in the compiled module."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm import _C


def test_build_info_fields():
    info = fastlstm.build_info()
    for key in ("version", "isa_compiled", "isa_selected", "num_threads", "cuda_compiled", "cuda_archs", "cuda_devices"):
        assert key in info, key
    assert info["version"] == fastlstm.__version__
    assert info["isa_compiled"][0] == "scalar"
    assert info["isa_selected"] in info["isa_supported"]
    assert set(info["isa_supported"]) <= set(info["isa_compiled"])
    assert info["num_threads"] >= 1
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert len(info["cuda_device_names"]) == info["cuda_devices"]
    if info["cuda_compiled"]:  # CMake found nvcc: machine code (sm_NN) and/or PTX (compute_NN) per architecture
        assert info["cuda_archs"] and all(re.fullmatch(r"(sm|compute)_\d+|native|all|all-major", a) for a in info["cuda_archs"])
    else:
        assert info["cuda_archs"] == [] and info["cuda_devices"] == 0


def test_isa_can_be_forced_from_the_environment():
    for isa in fastlstm.build_info()["isa_supported"]:
        out = subprocess.run([sys.executable, "-c", "import fastlstm; print(fastlstm.get_isa())"],
                             env={"FASTLSTM_ISA": isa, "PATH": ""}, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == isa
    bad = subprocess.run([sys.executable, "-c", "import fastlstm"], env={"FASTLSTM_ISA": "mmx"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "FASTLSTM_ISA='mmx'" in bad.stderr


def test_cli_info_prints_build_info():
    out = subprocess.run([sys.executable, "-m", "fastlstm", "info"], capture_output=True, text=True, check=True)
    assert re.search(r"isa_selected\s+\w+", out.stdout)
    assert fastlstm.__version__ in out.stdout


def test_cli_bad_arguments_exit_nonzero_with_one_line():
    out = subprocess.run([sys.executable, "-m", "fastlstm", "frobnicate"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_wider_vector_instructions_only_in_their_isa_namespace():
    """A module built here must run on CPUs without AVX-512 (or AVX2): zmm registers may appear only in
    fastlstm::cpu_avx512 functions, ymm only in cpu_avx2/cpu_avx512 (the dispatch table guards those)."""
    dump = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _C.__file__],
                          capture_output=True, text=True, check=True).stdout
    offenders = {"zmm": set(), "ymm": set()}
    seen_zmm_in_avx512 = False
    func = ""
    for line in dump.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            func = m.group(1)
            continue
        seen_zmm_in_avx512 |= "%zmm" in line and "cpu_avx512" in func
        if "%zmm" in line and "cpu_avx512" not in func:
            offenders["zmm"].add(func)
        if "%ymm" in line and "cpu_avx512" not in func and "cpu_avx2" not in func:
            offenders["ymm"].add(func)
    if "avx512" in fastlstm.build_info()["isa_compiled"]:
        assert seen_zmm_in_avx512, "the AVX-512 kernels use no zmm register: the check sees nothing"
    assert not offenders["zmm"], f"AVX-512 outside cpu_avx512: {sorted(offenders['zmm'])[:5]}"
    assert not offenders["ymm"], f"AVX outside cpu_avx2/cpu_avx512: {sorted(offenders['ymm'])[:5]}"


@pytest.mark.skipif(not fastlstm.build_info()["cuda_compiled"], reason="no CUDA kernels in this build")
def test_cuda_entry_points_check_their_arguments_without_a_gpu():
    """The CUDA bindings reject host arrays by name, and with no GPU report the CUDA error (no crash)."""
    z = np.zeros((1, 64, 16), np.float32)
    args = [np.zeros((5, 1, 64), np.float32), z, None, None, None, np.zeros((5, 1, 16), np.float32),
            np.zeros((1, 1, 16), np.float32), np.zeros((1, 1, 16), np.float32), None, None, False]
    with pytest.raises(ValueError, match="w_hh: expected a CUDA array"):
        _C.cuda_lstm_forward(*args, device=0, stream=0)
    with pytest.raises(ValueError, match="strategy: expected 'auto', 'persistent' or 'streaming'"):
        _C.cuda_lstm_forward(*args, device=0, stream=0, strategy="fast")
    if fastlstm.build_info()["cuda_devices"] == 0:
        with pytest.raises(RuntimeError, match="CUDA error"):
            _C.cuda_strategy(1, 64, 1, False, False)
