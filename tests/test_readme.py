"""The README's Python examples run as written (the training example with its sizes scaled down)."""

import re
from pathlib import Path

import pytest

import fastlstm

README = Path(__file__).resolve().parents[1] / "README.md"

# the training example trains for ~40 s as written; these make it take a second (each must be present)
SMALLER = {"steps=3000": "steps=100", "CosineLR(1e-2, 3000": "CosineLR(1e-2, 100",
           "adding_problem(20000, seq_len=100": "adding_problem(300, seq_len=20",
           "adding_problem(2000, seq_len=100": "adding_problem(100, seq_len=20",
           "model.summary((100, 2))": "model.summary((20, 2))"}


def test_readme_python_examples_run(tmp_path, monkeypatch):
    if not README.is_file():
        pytest.skip("README.md is not next to the tests (installed tests)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the training example writes best.npz
    namespace = {}
    gpu = fastlstm._backend.cuda_usable()
    for i, code in enumerate(blocks):
        if "import cupy" in code and not gpu:  # the GPU example runs where a GPU is usable
            continue
        if "train.fit(" in code:
            for old, new in SMALLER.items():
                assert old in code, f"README training example changed: update SMALLER ({old!r} not found)"
                code = code.replace(old, new)
            code = code.replace("callbacks=[", "progress=False, callbacks=[")
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "best.npz").is_file()
