"""The CPU weight layouts: soundry's row kernel (fp32, where it builds: soundry.models.audiocraft.lm.rows_kernel) or
oneDNN-prepacked linears (soundry.models.audiocraft.lm.packed; bf16, or cpu_linear = onednn) by default, the same
results as plain nn.Linear up to float32 rounding, and settings that pick oneDNN or turn both off (the plain path
must keep reproducing the reference too)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soundry.engine.generate import generate
from soundry.models import load_model
from soundry.models.audiocraft.lm.packed import PackedLinear, can_pack, is_packed, pack_linears_
from soundry.tasks.engines import EngineManager
from tests.conftest import make_settings
from tests.helpers_models import TINY, default_cpu_weights, golden, tiny_model
from tests.helpers_teacher import teacher_logits


def test_packed_linear_is_nn_linear_up_to_rounding():
    torch.manual_seed(0)
    for bias in (False, True):
        lin = nn.Linear(96, 160, bias=bias)
        packed = PackedLinear(lin)
        for rows in (1, 2, 7, 16):  # the layout is tuned for 2 rows; any count must give the same math
            x = torch.randn(rows, 3, 96)
            with torch.no_grad():
                torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)


def test_packing_applies_where_it_runs_only():
    assert can_pack(torch.float32, "cpu")
    assert not can_pack(torch.float16, "cpu")  # no packed fp16 kernel: plain nn.Linear
    assert not can_pack(torch.float32, "cuda")
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    assert pack_linears_(net) == 2 and is_packed(net) and not any(type(m) is nn.Linear for m in net.modules())


def test_each_cpu_layout_matches_plain():
    default = tiny_model("musicgen")
    onednn = load_model(str(TINY["musicgen"]), device="cpu", packed="onednn")
    plain = load_model(str(TINY["musicgen"]), device="cpu", packed=False)
    assert is_packed(onednn.lm) and not is_packed(plain.lm)
    # what the model list and /metrics report
    assert (default.weights, onednn.weights, plain.weights) == (default_cpu_weights(), "packed", "plain")
    g = golden("musicgen")
    b, mask = teacher_logits(plain, g["teacher_codes"], g["prompts"])
    for model in (default, onednn):
        a, _ = teacher_logits(model, g["teacher_codes"], g["prompts"])
        torch.testing.assert_close(a[mask], b[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["audiogen", "musicgen"])
def test_plain_weights_still_reproduce_the_reference(kind):
    """The fallback (packed_weights = false) stays exact against audiocraft's greedy tokens."""
    g = golden(kind)
    model = load_model(str(TINY[kind]), device="cpu", packed=False)
    out = generate(model, g["prompts"][:2], duration=g["greedy_duration"], top_k=1, cfg_coef=g["cfg_coef"])
    assert torch.equal(out.tokens, g["greedy_tokens"])


def test_the_setting_reaches_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDRY_PACKED_WEIGHTS", "false")
    off = EngineManager.from_settings(make_settings(tmp_path))
    monkeypatch.delenv("SOUNDRY_PACKED_WEIGHTS")
    on = EngineManager.from_settings(make_settings(tmp_path))
    compiled = EngineManager.from_settings(make_settings(tmp_path, compile=True))
    onednn = EngineManager.from_settings(make_settings(tmp_path, cpu_linear="onednn"))
    assert on._loader.keywords["packed"] == "auto"
    assert off._loader.keywords["packed"] is False
    assert compiled._loader.keywords["packed"] == "auto"  # the compiled step calls the same kernels
    assert onednn._loader.keywords["packed"] == "onednn"
    model = off._loader(str(TINY["audiogen"]))
    assert not is_packed(model.lm)
