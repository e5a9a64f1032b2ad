"""An audiocraft-format MusicGen release folder written in transformers' layout (the inverse of
``soundry.models.audiocraft.formats.transformers``'s mapping, and of transformers' own
``convert_musicgen_transformers.py``).

The folder must carry its text encoder (``t5/``) and codec (``encodec/``, transformers' EncodecModel) as the
tiny reference folders do; the hub's ``t5-base`` / ``facebook/encodec_32khz`` are not fetched here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from soundry.models.audiocraft.checkpoint import LMConfig, load_package, parse_cfg
from soundry.models.audiocraft.lm.transformer import normalize_state_dict
from soundry.models.errors import CheckpointError

_PROJ = "condition_provider.conditioners.description.output_proj."
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json")


def _decoder_weights(state: dict[str, torch.Tensor], cfg: LMConfig) -> dict[str, torch.Tensor]:
    ours = normalize_state_dict(state)
    dec, out = "decoder.model.decoder.", {}
    for q in range(cfg.n_q):
        out[f"{dec}embed_tokens.{q}.weight"] = ours[f"emb.{q}.weight"]
        out[f"decoder.lm_heads.{q}.weight"] = ours[f"linears.{q}.weight"]
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"{dec}layers.{i}."
        for p, w in zip("qkv", ours[src + "self_attn.qkv_proj.weight"].chunk(3), strict=True):
            out[dst + f"self_attn.{p}_proj.weight"] = w
        out[dst + "self_attn.out_proj.weight"] = ours[src + "self_attn.out_proj.weight"]
        out[dst + "encoder_attn.q_proj.weight"] = ours[src + "cross_attention.q_proj.weight"]
        k, v = ours[src + "cross_attention.kv_proj.weight"].chunk(2)
        out[dst + "encoder_attn.k_proj.weight"], out[dst + "encoder_attn.v_proj.weight"] = k, v
        out[dst + "encoder_attn.out_proj.weight"] = ours[src + "cross_attention.out_proj.weight"]
        for theirs, mine in (("self_attn_layer_norm", "norm1"), ("encoder_attn_layer_norm", "norm_cross"),
                             ("final_layer_norm", "norm2")):
            for kind in ("weight", "bias"):
                out[f"{dst}{theirs}.{kind}"] = ours[f"{src}{mine}.{kind}"]
        out[dst + "fc1.weight"], out[dst + "fc2.weight"] = ours[src + "linear1.weight"], ours[src + "linear2.weight"]
    for kind in ("weight", "bias"):
        out[f"{dec}layer_norm.{kind}"] = ours[f"out_norm.{kind}"]
    return out


def to_transformers(release_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``out_dir`` (config.json, generation_config.json, model.safetensors in ``dtype``, tokenizer files)."""
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    pkg = load_package(release_dir / "state_dict.bin")
    xp = parse_cfg(pkg, release_dir / "state_dict.bin")
    cfg = LMConfig.from_cfg(xp)
    if cfg.bias_attn or cfg.bias_ff or cfg.bias_proj or cfg.positional_scale != 1.0 or cfg.max_period != 10000:
        raise CheckpointError("transformers' MusicGen has no biases in the decoder, positional scale 1 and "
                              "max_period 10000; this checkpoint differs")
    for sub in ("t5", "encodec"):
        if not (release_dir / sub / "model.safetensors").is_file():
            raise CheckpointError(f"{release_dir} has no {sub}/model.safetensors to take the {sub} from")
    channels = int(xp.get("channels", 1))
    state = {k: v.float() for k, v in _decoder_weights(pkg["best_state"], cfg).items()}
    state["enc_to_dec_proj.weight"] = pkg["best_state"][_PROJ + "weight"].float()
    state["enc_to_dec_proj.bias"] = pkg["best_state"][_PROJ + "bias"].float()
    for sub, prefix in (("t5", "text_encoder."), ("encodec", "audio_encoder.")):
        weights = load_file(str(release_dir / sub / "model.safetensors"))
        state.update({prefix + k: v.float() for k, v in weights.items()})
    t5_cfg = json.loads((release_dir / "t5" / "config.json").read_text())
    codec_cfg = json.loads((release_dir / "encodec" / "config.json").read_text())
    decoder = {"model_type": "musicgen_decoder", "vocab_size": cfg.card, "max_position_embeddings": 2048,
               "num_hidden_layers": cfg.num_layers, "ffn_dim": cfg.hidden_scale * cfg.dim,
               "num_attention_heads": cfg.num_heads, "hidden_size": cfg.dim, "num_codebooks": cfg.n_q,
               "audio_channels": channels, "activation_function": cfg.activation, "pad_token_id": cfg.card,
               "bos_token_id": cfg.card, "dropout": 0.0, "layerdrop": 0.0}
    config = {"model_type": "musicgen", "architectures": ["MusicgenForConditionalGeneration"],
              "text_encoder": t5_cfg, "audio_encoder": codec_cfg, "decoder": decoder, "is_encoder_decoder": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"decoder_start_token_id": cfg.card, "pad_token_id": cfg.card, "bos_token_id": cfg.card,
         "guidance_scale": cfg.cfg_coef, "do_sample": True, "top_k": 250, "max_length": 1500}, indent=2))
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    for name in _TOKENIZER_FILES:
        if (release_dir / "t5" / name).is_file():
            shutil.copy(release_dir / "t5" / name, out_dir / name)
    return out_dir
