"""A real-size model (audiogen-medium shape, random weights) loads from a release-format directory
and generates: shapes right, nothing NaN."""

import pytest
import torch

from soundry.engine import Engine, GenerationRequest
from soundry.models import load_model
from soundry.models.audiocraft.shapes import SHAPES, write_random_release
from tests.helpers_models import TINY


@pytest.mark.slow
def test_audiogen_medium_shape_loads_and_steps(tmp_path):
    release = write_random_release(tmp_path / "audiogen-medium-random", "audiogen-medium", TINY["audiogen"])
    model = load_model(str(release), device="cpu")
    shape = SHAPES["audiogen-medium"]
    assert model.cfg.dim == shape["dim"] and model.cfg.num_layers == shape["num_layers"]
    assert model.lm.layers[0].self_attn.num_heads == shape["num_heads"]
    weights = [*model.lm.parameters(), *model.lm.buffers()]  # packed linears keep their weights as buffers
    assert sum(t.numel() for t in weights) > 1.3e9
    engine = Engine(model, max_batch=2).start()
    try:  # 2 frames + 3 steps of delay: the whole pipeline, text to audio, on the real shape
        result = engine.submit(GenerationRequest("dog barking", duration=0.04, seed=0)).result(timeout=600)
    finally:
        engine.stop()
    assert result.tokens.shape == (4, 2) and result.tokens.dtype == torch.int64
    assert ((result.tokens >= 0) & (result.tokens < 2048)).all()
    assert result.audio.shape == (1, 640) and torch.isfinite(result.audio).all()
