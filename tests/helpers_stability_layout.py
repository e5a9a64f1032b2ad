"""A tiny Stable Audio Open checkpoint written in Stability's own layout (stable-audio-tools' ``model_config.json``
and ``model.safetensors``), made from the diffusers-layout tiny folder in tests/data.

The names are written here from stable-audio-tools' module tree, as its source builds it, not by reversing
soundry's converter (``soundry.models.stable_audio.convert``): each stable-audio-tools module is paired with the
diffusers module that plays its part (found by attribute on the built diffusers networks), and the module's
parameters are emitted under the stable-audio-tools path:

- ``ConditionedDiffusionModelWrapper`` → ``model`` (``DiTWrapper``) → ``model`` (``DiffusionTransformer``):
  ``timestep_features`` (``FourierFeatures(1, n)``: weight ``[n/2, 1]``), ``to_timestep_embed`` /
  ``to_cond_embed`` / ``to_global_embed`` (``Sequential(Linear, SiLU, Linear)``), ``preprocess_conv``,
  ``postprocess_conv``, ``transformer`` (``ContinuousTransformer``: ``project_in``, ``project_out``,
  ``rotary_pos_emb.inv_freq`` buffer, ``layers[i]`` = ``TransformerBlock``: ``pre_norm`` / ``cross_attend_norm`` /
  ``ff_norm`` (``LayerNorm``: ``gamma``, ``beta``), ``self_attn.to_qkv`` (one Linear, q|k|v stacked),
  ``self_attn.to_out``, ``cross_attn.to_q``, ``cross_attn.to_kv`` (k|v stacked), ``cross_attn.to_out``,
  ``ff.ff`` = ``Sequential(GLU(proj), Identity, Linear)``).
- ``pretransform`` (``AutoencoderPretransform``) → ``model`` (``AudioAutoencoder``) → ``encoder`` / ``decoder``
  (``OobleckEncoder`` / ``OobleckDecoder``: ``layers`` = [WNConv1d, blocks..., SnakeBeta, WNConv1d]; an
  ``EncoderBlock``'s ``layers`` = [ResidualUnit(1), ResidualUnit(3), ResidualUnit(9), SnakeBeta, WNConv1d]; a
  ``DecoderBlock``'s = [SnakeBeta, WNConvTranspose1d, ResidualUnit × 3]; a ``ResidualUnit``'s = [SnakeBeta,
  WNConv1d, SnakeBeta, WNConv1d]; ``SnakeBeta.alpha`` / ``beta`` are ``[C]``). The VAE bottleneck has no weights.
- ``conditioner`` (``MultiConditioner``) → ``conditioners[id]``: ``prompt`` (``T5Conditioner``: its T5 is not in
  the state dict; ``proj_out`` is Identity when the widths match), ``seconds_start`` / ``seconds_total``
  (``NumberConditioner`` → ``embedder`` (``NumberEmbedder``) → ``embedding`` = ``Sequential(
  LearnedPositionalEmbedding (weights), Linear)``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def _emit(out: dict, prefix: str, module: torch.nn.Module, snake: bool = False) -> None:
    for name, value in module.state_dict().items():
        value = value.detach().clone()
        if snake:  # SnakeBeta in stable-audio-tools holds [C]; diffusers' Snake1d [1, C, 1]
            value = value.reshape(-1)
        out[f"{prefix}.{name}"] = value


def _residual(out: dict, prefix: str, unit) -> None:
    for slot, (module, snake) in enumerate([(unit.snake1, True), (unit.conv1, False), (unit.snake2, True),
                                            (unit.conv2, False)]):
        _emit(out, f"{prefix}.layers.{slot}", module, snake)


def oobleck(out: dict, prefix: str, vae) -> None:
    enc, dec = vae.encoder, vae.decoder
    n = len(enc.block)
    _emit(out, f"{prefix}.encoder.layers.0", enc.conv1)
    for i, block in enumerate(enc.block):
        p = f"{prefix}.encoder.layers.{i + 1}"
        for j, unit in enumerate([block.res_unit1, block.res_unit2, block.res_unit3]):
            _residual(out, f"{p}.layers.{j}", unit)
        _emit(out, f"{p}.layers.3", block.snake1, True)
        _emit(out, f"{p}.layers.4", block.conv1)
    _emit(out, f"{prefix}.encoder.layers.{n + 1}", enc.snake1, True)
    _emit(out, f"{prefix}.encoder.layers.{n + 2}", enc.conv2)
    _emit(out, f"{prefix}.decoder.layers.0", dec.conv1)
    for i, block in enumerate(dec.block):
        p = f"{prefix}.decoder.layers.{i + 1}"
        _emit(out, f"{p}.layers.0", block.snake1, True)
        _emit(out, f"{p}.layers.1", block.conv_t1)
        for j, unit in enumerate([block.res_unit1, block.res_unit2, block.res_unit3]):
            _residual(out, f"{p}.layers.{j + 2}", unit)
    _emit(out, f"{prefix}.decoder.layers.{n + 1}", dec.snake1, True)
    _emit(out, f"{prefix}.decoder.layers.{n + 2}", dec.conv2)


def dit(out: dict, prefix: str, net, head_dim: int) -> None:
    out[f"{prefix}.timestep_features.weight"] = net.time_proj.weight.detach().clone().reshape(-1, 1)
    for src, dst in ((net.timestep_proj, "to_timestep_embed"), (net.cross_attention_proj, "to_cond_embed"),
                     (net.global_proj, "to_global_embed")):
        _emit(out, f"{prefix}.{dst}", src)
    _emit(out, f"{prefix}.preprocess_conv", net.preprocess_conv)
    _emit(out, f"{prefix}.postprocess_conv", net.postprocess_conv)
    _emit(out, f"{prefix}.transformer.project_in", net.proj_in)
    _emit(out, f"{prefix}.transformer.project_out", net.proj_out)
    rot = max(head_dim // 2, 32)  # ContinuousTransformer's RotaryEmbedding(max(dim_heads // 2, 32)) buffer
    out[f"{prefix}.transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    for i, blk in enumerate(net.transformer_blocks):
        p = f"{prefix}.transformer.layers.{i}"
        for norm, name in ((blk.norm1, "pre_norm"), (blk.norm2, "cross_attend_norm"), (blk.norm3, "ff_norm")):
            out[f"{p}.{name}.gamma"] = norm.weight.detach().clone()
            out[f"{p}.{name}.beta"] = norm.bias.detach().clone()
        a1, a2 = blk.attn1, blk.attn2
        out[f"{p}.self_attn.to_qkv.weight"] = torch.cat([a1.to_q.weight, a1.to_k.weight, a1.to_v.weight]).detach()
        out[f"{p}.self_attn.to_out.weight"] = a1.to_out[0].weight.detach().clone()
        out[f"{p}.cross_attn.to_q.weight"] = a2.to_q.weight.detach().clone()
        out[f"{p}.cross_attn.to_kv.weight"] = torch.cat([a2.to_k.weight, a2.to_v.weight]).detach()
        out[f"{p}.cross_attn.to_out.weight"] = a2.to_out[0].weight.detach().clone()
        _emit(out, f"{p}.ff.ff.0.proj", blk.ff.net[0].proj)
        _emit(out, f"{p}.ff.ff.2", blk.ff.net[2])


def conditioners(out: dict, prefix: str, proj) -> None:
    if isinstance(proj.text_projection, torch.nn.Linear):
        _emit(out, f"{prefix}.prompt.proj_out", proj.text_projection)
    for src, cid in ((proj.start_number_conditioner, "seconds_start"), (proj.end_number_conditioner,
                                                                        "seconds_total")):
        _emit(out, f"{prefix}.{cid}.embedder.embedding", src.time_positional_embedding)


def model_config(folder: Path) -> dict:
    """stable-audio-tools' ``model_config.json`` for the tiny pipeline (as Stable Audio Open 1.0's is written)."""
    t = json.loads((folder / "transformer" / "config.json").read_text())
    v = json.loads((folder / "vae" / "config.json").read_text())
    p = json.loads((folder / "projection_model" / "config.json").read_text())
    tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    hop = 1
    for r in v["downsampling_ratios"]:
        hop *= r
    oob = {"channels": v["encoder_hidden_size"], "c_mults": v["channel_multiples"],
           "strides": v["downsampling_ratios"], "use_snake": True}
    number = {"min_val": p["min_value"], "max_val": p["max_value"]}
    return {
        "model_type": "diffusion_cond", "sample_size": t["sample_size"] * hop, "sample_rate": v["sampling_rate"],
        "audio_channels": v["audio_channels"],
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "oobleck", "requires_grad": False, "config": {
                    "in_channels": v["audio_channels"], "latent_dim": 2 * v["decoder_input_channels"], **oob}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": v["audio_channels"], "latent_dim": v["decoder_input_channels"],
                    "final_tanh": False, **oob}},
                "bottleneck": {"type": "vae"}, "latent_dim": v["decoder_input_channels"], "downsampling_ratio": hop,
                "io_channels": v["audio_channels"]}},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base",
                                                          "max_length": tok["model_max_length"]}},
                {"id": "seconds_start", "type": "number", "config": number},
                {"id": "seconds_total", "type": "number", "config": number}], "cond_dim": p["conditioning_dim"]},
            "diffusion": {"cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                          "global_cond_ids": ["seconds_start", "seconds_total"], "type": "dit", "config": {
                              "io_channels": t["in_channels"], "embed_dim": t["num_attention_heads"]
                              * t["attention_head_dim"], "depth": t["num_layers"],
                              "num_heads": t["num_attention_heads"], "cond_token_dim": t["cross_attention_input_dim"],
                              "global_cond_dim": t["global_states_input_dim"], "project_cond_tokens": True,
                              "transformer_type": "continuous_transformer"}},
            "io_channels": t["in_channels"]},
    }


def write_stability_layout(diffusers_folder: Path, dst: Path, with_text_encoder: bool = True) -> Path:
    """``dst`` = the tiny pipeline in Stability's layout (+ the T5's ``text_encoder/`` and ``tokenizer/``
    folders beside it, which stable-audio-tools itself would load from the hub by ``t5_model_name``)."""
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel
    from safetensors.torch import save_file

    net = StableAudioDiTModel.from_pretrained(str(diffusers_folder / "transformer"), use_safetensors=True)
    vae = AutoencoderOobleck.from_pretrained(str(diffusers_folder / "vae"), use_safetensors=True)
    proj = StableAudioProjectionModel.from_pretrained(str(diffusers_folder / "projection_model"),
                                                      use_safetensors=True)
    sd: dict = {}
    dit(sd, "model.model", net, net.config.attention_head_dim)
    oobleck(sd, "pretransform.model", vae)
    conditioners(sd, "conditioner.conditioners", proj)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"))
    (dst / "model_config.json").write_text(json.dumps(model_config(diffusers_folder), indent=2))
    (dst / "README.md").write_text("---\nlicense: other\nlicense_name: stable-audio-community\n---\n# tiny\n")
    if with_text_encoder:
        shutil.copytree(diffusers_folder / "text_encoder", dst / "text_encoder")
        shutil.copytree(diffusers_folder / "tokenizer", dst / "tokenizer")
    return dst
