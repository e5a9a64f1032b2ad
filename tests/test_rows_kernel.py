"""soundry's few-row CPU linear kernel (soundry.models.audiocraft.lm.rows_kernel): nn.Linear's math up to float32
rounding for any row count, a row's result the same bit for bit whatever shares the call (its summation order is
fixed by construction — a property of the kernel, not of how this CPU rounds), only the layers it fits, and oneDNN's
packed layout whenever it is switched off or cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from soundry.engine.generate import generate
from soundry.models import load_model
from soundry.models.audiocraft.lm import rows_kernel
from soundry.models.audiocraft.lm.rows_kernel import RowsLinear, use_rows_kernel_
from tests.conftest import make_settings
from tests.helpers_models import TINY

needs_kernel = pytest.mark.skipif(not rows_kernel.available(), reason="no C++ compiler to build the kernel here")


@needs_kernel
@pytest.mark.parametrize("in_features,out_features", [(64, 192), (96, 160), (100, 48), (512, 2048)])
@pytest.mark.parametrize("bias", [False, True])
def test_it_is_nn_linear_up_to_rounding_for_any_row_count(in_features, out_features, bias):
    g = torch.Generator().manual_seed(in_features + out_features)
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / in_features ** 0.5)
        if bias:
            lin.bias.copy_(torch.randn(out_features, generator=g))
        kernel = RowsLinear(lin)
        for rows in (1, 2, 3, 5, 8, 13, 16, 40):
            x = torch.randn(rows, 1, in_features, generator=g)
            torch.testing.assert_close(kernel(x), lin(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(3, 4, in_features, generator=g)[:, 1:]  # a non-contiguous input of several steps
        torch.testing.assert_close(kernel(x), lin(x), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_a_rows_result_does_not_depend_on_what_shares_the_call():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(256, 512)
    kernel = RowsLinear(lin)
    x = torch.randn(37, 256, generator=g)
    with torch.no_grad():
        together = kernel(x)
        for i in range(37):  # alone, and at every position of chunks of other sizes
            assert torch.equal(kernel(x[i:i + 1]), together[i:i + 1])
        for start, stop in ((3, 5), (1, 12), (20, 36), (0, 9)):
            assert torch.equal(kernel(x[start:stop]), together[start:stop])
        threads = torch.get_num_threads()
        try:  # nor on how many threads split the outputs
            for n in (1, 3):
                torch.set_num_threads(n)
                assert torch.equal(kernel(x), together)
        finally:
            torch.set_num_threads(threads)


@needs_kernel
def test_only_fitting_layers_are_replaced():
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 20)), nn.Linear(32, 16).double())
    assert use_rows_kernel_(net) == 1  # 20 outputs are not a multiple of 16; float64 is not float32
    assert isinstance(net[0], RowsLinear) and type(net[2][0]) is nn.Linear and type(net[3]) is nn.Linear


@needs_kernel
def test_the_default_fp32_cpu_load_uses_it_and_decodes_like_onednn():
    rows = load_model(str(TINY["musicgen"]), device="cpu")
    onednn = load_model(str(TINY["musicgen"]), device="cpu", packed="onednn")
    assert (rows.weights, onednn.weights) == ("rows", "packed")
    bf16 = load_model(str(TINY["musicgen"]), device="cpu", precision="bf16")
    assert bf16.weights == "packed"  # the kernel is float32 only
    a = generate(rows, ["rain on a tin roof"], duration=0.5, top_k=1)
    b = generate(onednn, ["rain on a tin roof"], duration=0.5, top_k=1)
    torch.testing.assert_close(a.audio, b.audio, rtol=1e-3, atol=1e-3)


def test_switched_off_or_unbuildable_it_leaves_onednn(monkeypatch, tmp_path):
    assert not rows_kernel.available("onednn")
    monkeypatch.setenv("SOUNDRY_CPU_LINEAR", "onednn")  # the setting, as the service and the local CLI read it
    settings = make_settings(tmp_path)
    assert load_model(str(TINY["audiogen"]), device="cpu", packed=settings.linear_kernel).weights == "packed"
    monkeypatch.delenv("SOUNDRY_CPU_LINEAR")
    monkeypatch.setattr(rows_kernel, "_state", {})  # as in a process that has not tried yet
    monkeypatch.setattr(rows_kernel.shutil, "which", lambda _name: None)
    assert not rows_kernel.available()
    assert "no C++ compiler" in rows_kernel._state["error"]
    assert load_model(str(TINY["audiogen"]), device="cpu").weights == "packed"
    with pytest.raises(ValueError, match="cpu_linear"):
        rows_kernel.available("fast")


def test_the_build_is_cached_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("SOUNDRY_KERNEL_CACHE", str(tmp_path))
    assert rows_kernel.cache_dir() == tmp_path
    name = rows_kernel._build_name()
    monkeypatch.setattr(rows_kernel, "_cpu_signature", lambda: "model name: another CPU\nflags: sse2\n")
    assert rows_kernel._build_name() != name  # a -march=native build never runs on another CPU


@needs_kernel
def test_a_builder_killed_mid_build_does_not_hang_the_next_one(tmp_path):
    """torch's builder leaves its lock file behind when killed; the next process builds anyway (in its own
    process: a second build of the op cannot be loaded beside the first one in this one)."""
    env = {**os.environ, "SOUNDRY_KERNEL_CACHE": str(tmp_path)}
    name = rows_kernel._build_name()
    (tmp_path / name).mkdir()
    (tmp_path / name / "lock").touch()  # as a killed builder leaves it
    (tmp_path / name / f"{name}.so").write_bytes(b"half-written")  # and a broken library
    code = "from soundry.models.audiocraft.lm import rows_kernel as r; print(r.available(), r._state['error'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[0] == "True", done.stdout + done.stderr
