"""The real model shapes (from the released xp.cfg files), for benchmarks and shape tests with
random weights, and a writer of release-format directories holding such weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from soundry.models.audiocraft.checkpoint import LMConfig

SHAPES: dict[str, dict] = {
    "audiogen-medium": {"dim": 1536, "num_heads": 24, "num_layers": 48, "t5": "t5-large", "t5_dim": 1024,
                        "sample_rate": 16000, "segment_duration": 10},
    "musicgen-small": {"dim": 1024, "num_heads": 16, "num_layers": 24, "t5": "t5-base", "t5_dim": 768,
                       "sample_rate": 32000, "segment_duration": 30},
    "musicgen-medium": {"dim": 1536, "num_heads": 24, "num_layers": 48, "t5": "t5-base", "t5_dim": 768,
                        "sample_rate": 32000, "segment_duration": 30},
    "musicgen-large": {"dim": 2048, "num_heads": 32, "num_layers": 48, "t5": "t5-base", "t5_dim": 768,
                       "sample_rate": 32000, "segment_duration": 30},
}


def xp_cfg(shape: str, **overrides) -> dict:
    """An xp.cfg dict in the release layout for a named shape (overrides replace LM fields)."""
    s = SHAPES[shape]
    lm = {"dim": s["dim"], "num_heads": s["num_heads"], "num_layers": s["num_layers"], "hidden_scale": 4,
          "n_q": 4, "card": 2048, "dropout": 0.0, "activation": "gelu", "norm_first": True, "bias_ff": False,
          "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True, "custom": False,
          "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
          "positional_embedding": "sin", "xpos": False, "norm": "layer_norm", "cross_attention": False,
          "qk_layer_norm": False, "qk_layer_norm_cross": False, "kv_repeat": 1, "two_step_cfg": False}
    lm.update(overrides)
    return {
        "device": "cpu", "dtype": "float32", "sample_rate": s["sample_rate"], "channels": 1,
        "dataset": {"segment_duration": s["segment_duration"]}, "lm_model": "transformer_lm",
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0,
                                                             "empty_initial": 0}},
        "transformer_lm": lm,
        "classifier_free_guidance": {"training_dropout": 0.1, "inference_coef": 3.0},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                  "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {"name": s["t5"], "finetune": False,
                                                               "word_dropout": 0.0, "normalize_text": False}}},
    }


def lm_config(shape: str) -> LMConfig:
    return LMConfig.from_cfg(xp_cfg(shape))


def random_state_dict(cfg: LMConfig, t5_dim: int, dtype: torch.dtype = torch.float16, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """Random weights under the release key names (std 1/sqrt(fan_in); norms at 1)."""
    g = torch.Generator().manual_seed(seed)
    D, F = cfg.dim, cfg.hidden_scale * cfg.dim

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(dtype)

    sd = {"condition_provider.conditioners.description.output_proj.weight": rnd(D, t5_dim),
          "condition_provider.conditioners.description.output_proj.bias": torch.zeros(D, dtype=dtype)}
    for k in range(cfg.n_q):
        sd[f"emb.{k}.weight"] = rnd(cfg.card + 1, D)
        sd[f"linears.{k}.weight"] = rnd(cfg.card, D)
    for i in range(cfg.num_layers):
        p = f"transformer.layers.{i}."
        for attn in ("self_attn", "cross_attention"):
            sd[p + f"{attn}.in_proj_weight"] = rnd(3 * D, D)
            sd[p + f"{attn}.out_proj.weight"] = rnd(D, D)
        sd[p + "linear1.weight"] = rnd(F, D)
        sd[p + "linear2.weight"] = rnd(D, F)
        for norm in ("norm1", "norm2", "norm_cross"):
            sd[p + f"{norm}.weight"] = torch.ones(D, dtype=dtype)
            sd[p + f"{norm}.bias"] = torch.zeros(D, dtype=dtype)
    sd["out_norm.weight"] = torch.ones(D, dtype=dtype)
    sd["out_norm.bias"] = torch.zeros(D, dtype=dtype)
    return sd


def write_random_release(out: Path, shape: str, companion: Path, seed: int = 0,
                         dtype: torch.dtype = torch.float16, **lm_overrides) -> Path:
    """A release-format directory with a real-shape LM of random weights (``lm_overrides`` replace
    fields of the shape's transformer_lm, e.g. ``dim=512``). The text encoder (``t5/``) and codec
    come from ``companion``, a small release directory (e.g. a tiny reference model), so the
    directory loads offline."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("t5", "encodec"):
        if (companion / name).is_dir():
            shutil.copytree(companion / name, out / name, dirs_exist_ok=True)
    shutil.copy(companion / "compression_state_dict.bin", out / "compression_state_dict.bin")
    t5_cfg = yaml.safe_load((out / "t5" / "config.json").read_text())
    cfg = xp_cfg(shape, **lm_overrides)
    state = random_state_dict(LMConfig.from_cfg(cfg), int(t5_cfg["d_model"]), dtype, seed)
    torch.save({"best_state": state, "xp.cfg": yaml.safe_dump(cfg), "version": "soundry-random", "exported": True},
               out / "state_dict.bin")
    return out
