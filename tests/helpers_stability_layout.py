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
    """stable-audio-tools' ``model_config.json`` for the tiny pipeline, with Stable Audio Open 1.0's own file's keys
    and nesting (stabilityai/stable-audio-open-1.0's model_config.json: no key that file lacks, each where it puts
    it; tests/test_stable_audio_weights.py holds a trimmed copy to compare with) and the tiny's sizes.

    ``project_cond_tokens`` is what the tiny's shapes say: the release keeps the prompt's tokens as wide as
    ``cond_dim`` (false: ``to_cond_embed`` maps 768 → 768, the cross-attention's keys are 768 wide), the tiny projects
    them to the DiT's width (true); ``project_global_cond`` is left to its default (true), as the release does."""
    t = json.loads((folder / "transformer" / "config.json").read_text())
    v = json.loads((folder / "vae" / "config.json").read_text())
    p = json.loads((folder / "projection_model" / "config.json").read_text())
    tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    hop = 1
    for r in v["downsampling_ratios"]:
        hop *= r
    oob = {"channels": v["encoder_hidden_size"], "c_mults": v["channel_multiples"],
           "strides": v["downsampling_ratios"]}
    number = {"min_val": p["min_value"], "max_val": p["max_value"]}
    latent = v["decoder_input_channels"]
    return {
        "model_type": "diffusion_cond", "sample_size": t["sample_size"] * hop, "sample_rate": v["sampling_rate"],
        "audio_channels": v["audio_channels"],
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "oobleck", "config": {
                    "in_channels": v["audio_channels"], **oob, "latent_dim": 2 * latent, "use_snake": True}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": v["audio_channels"], **oob, "latent_dim": latent, "use_snake": True,
                    "final_tanh": False}},
                "bottleneck": {"type": "vae"}, "latent_dim": latent, "downsampling_ratio": hop,
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
                              "global_cond_dim": t["global_states_input_dim"],
                              "project_cond_tokens": t["cross_attention_dim"] != t["cross_attention_input_dim"],
                              "transformer_type": "continuous_transformer"}},
            "io_channels": t["in_channels"]},
        "training": {"use_ema": True},  # the release's training block: not read by a converter or loader
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


# == Stable Audio 3 ===============================================================================================
# Stability-AI/stable-audio-3's module tree (stable_audio_3/factory.py, models/{diffusion,dit,transformer,
# autoencoders,bottleneck,conditioners}.py), as its ``state_dict()`` names it:
# - ``model`` (``DiTWrapper``) → ``model`` (``DiffusionTransformer``): ``to_timestep_embed`` (Linear+bias, SiLU,
#   Linear+bias), ``to_cond_embed`` / ``to_global_embed`` (Linear, SiLU, Linear, no bias), ``preprocess_conv``,
#   ``postprocess_conv``; ``timestep_features`` = ``ExpoFourierFeatures`` (no tensors); ``transformer``
#   (``ContinuousTransformer``): ``project_in``, ``project_out``, ``rotary_pos_emb.inv_freq`` (a persistent buffer),
#   ``memory_tokens``, ``global_cond_embedder`` (Linear, SiLU, Linear), ``layers[i]`` (``TransformerBlock``):
#   ``pre_norm`` / ``cross_attend_norm`` / ``ff_norm`` (RMSNorm ``gamma``), ``self_attn.to_qkv`` (differential: one
#   Linear of 5 × dim rows, q | k | v | q2 | k2), ``self_attn.to_out``, ``self_attn.q_norm`` / ``k_norm``,
#   ``cross_attn.to_q`` (q | q2) / ``to_kv`` (k | k2 | v) / ``to_out`` / ``q_norm`` / ``k_norm``, ``ff.ff`` =
#   Sequential(GLU(``proj``), Identity, Linear), ``to_scale_shift_gate``, ``to_local_embed`` (Linear, SiLU, Linear).
# - ``pretransform`` (``AutoencoderPretransform``) → ``model`` (``AudioAutoencoder``): ``encoder`` (``SAMEEncoder``:
#   ``layers`` = [TransformerResamplingBlock × depth, Transpose, Linear, Transpose]), ``decoder`` (``SAMEDecoder``:
#   [Transpose, Linear, Transpose, TransformerResamplingBlock × depth]), a TransformerResamplingBlock's
#   ``mapping`` (WNConv1d: weight_g, weight_v, bias), ``new_tokens``, ``transformers[j]`` (``TransformerBlock`` with
#   DynamicTanh norms: ``pre_norm`` / ``ff_norm`` / ``self_attn.q_norm`` / ``k_norm`` hold alpha, gamma, beta),
#   ``bottleneck`` (``SoftNormBottleneck``: scaling_factor, bias, noise_scaling_factor [1, noise_augment_dim, 1] —
#   empty here — and running_std), ``pretransform`` (``PatchedPretransform``: no tensors without a post-filter).
# - ``conditioner`` → ``conditioners``: ``prompt`` (``T5GemmaConditioner``: ``padding_embedding``; its T5Gemma is
#   kept outside the state dict when frozen, ``self.__dict__["model"]``, so it is written only when asked, as a
#   trained one would be), ``seconds_total`` (``NumberConditioner`` → ``embedder.embedding`` = Sequential(
#   ExpoFourierFeatures, Linear)).
# Each of those modules is paired with the diffusers module doing its job (by attribute on the built diffusers
# networks); only the differential self-attention's row order differs (diffusers keeps q | q2 | k | k2 | v).
def _stability_qkv(weight: torch.Tensor) -> torch.Tensor:
    q, q2, k, k2, v = weight.detach().clone().chunk(5, dim=0)
    return torch.cat([q, k, v, q2, k2])


def _sa3_block(out: dict, p: str, blk, dit: bool) -> None:
    """One TransformerBlock: a DiT block (``StableAudio3DiTBlock``) or a SAME one."""
    attn = blk.self_attn if dit else blk.attn
    for src, dst in ((blk.pre_norm if dit else blk.norm_attn, "pre_norm"), (blk.ff_norm if dit else blk.norm_ff,
                                                                             "ff_norm"),
                     (attn.q_norm, "self_attn.q_norm"), (attn.k_norm, "self_attn.k_norm"),
                     (attn.to_out, "self_attn.to_out")):
        _emit(out, f"{p}.{dst}", src)
    out[f"{p}.self_attn.to_qkv.weight"] = _stability_qkv(attn.to_qkv.weight)
    _emit(out, f"{p}.ff.ff.0.proj", blk.ff.proj_in)
    _emit(out, f"{p}.ff.ff.2", blk.ff.proj_out)
    if dit:
        _emit(out, f"{p}.cross_attend_norm", blk.cross_attend_norm)
        for name in ("to_q", "to_kv", "to_out", "q_norm", "k_norm"):
            _emit(out, f"{p}.cross_attn.{name}", getattr(blk.cross_attn, name))
        out[f"{p}.to_scale_shift_gate"] = blk.to_scale_shift_gate.detach().clone()
        _emit(out, f"{p}.to_local_embed", blk.to_local_embed)


def sa3_dit(out: dict, prefix: str, net) -> None:
    for name in ("to_timestep_embed", "to_cond_embed", "to_global_embed", "preprocess_conv", "postprocess_conv"):
        _emit(out, f"{prefix}.{name}", getattr(net, name))
    t = f"{prefix}.transformer"
    _emit(out, f"{t}.project_in", net.proj_in)
    _emit(out, f"{t}.project_out", net.proj_out)
    _emit(out, f"{t}.global_cond_embedder", net.global_cond_embedder)
    out[f"{t}.memory_tokens"] = net.memory_tokens.detach().clone()
    out[f"{t}.rotary_pos_emb.inv_freq"] = net.rotary_pos_emb.inv_freq.detach().clone()
    for i, blk in enumerate(net.transformer_blocks):
        _sa3_block(out, f"{t}.layers.{i}", blk, dit=True)


def _trb(out: dict, p: str, block) -> None:
    _emit(out, f"{p}.mapping", block.mapping)
    out[f"{p}.new_tokens"] = block.new_tokens.detach().clone()
    for j, blk in enumerate(block.transformers):
        _sa3_block(out, f"{p}.transformers.{j}", blk, dit=False)


def same(out: dict, prefix: str, vae) -> None:
    n = len(vae.encoder.blocks)
    for i, block in enumerate(vae.encoder.blocks):
        _trb(out, f"{prefix}.encoder.layers.{i}", block)
    _emit(out, f"{prefix}.encoder.layers.{n + 1}", vae.encoder.proj)  # after the blocks and a Transpose
    _emit(out, f"{prefix}.decoder.layers.1", vae.decoder.proj)  # between two Transposes
    for i, block in enumerate(vae.decoder.blocks):
        _trb(out, f"{prefix}.decoder.layers.{i + 3}", block)
    bn = vae.bottleneck
    out[f"{prefix}.bottleneck.scaling_factor"] = bn.scale.detach().clone()
    out[f"{prefix}.bottleneck.bias"] = bn.bias.detach().clone()
    out[f"{prefix}.bottleneck.noise_scaling_factor"] = torch.ones(1, 0, 1)  # noise_augment_dim 0
    out[f"{prefix}.bottleneck.running_std"] = bn.running_std.detach().clone()


def sa3_model_config(folder: Path, text_repo: str | None = None, text_subfolder: str | None = None) -> dict:
    """Stability-AI/stable-audio-3's ``model_config.json`` for the tiny pipeline (the fields its factory reads).

    The released files themselves could not be read here (gated); what is known of them is written as they have
    it: ``model_type`` ``diffusion_cond_inpaint`` with the inpainting inputs in ``local_add_cond_ids``, an
    RMS-normed DiT (``norm_type`` ``rms_norm``, ``force_fp32``: diffusers' StableAudio3RMSNorm says the reference
    uses these), T5Gemma's ``max_length`` 256 and a learned padding; the T5Gemma is named by ``model_name`` (the hub's
    google/t5gemma-b-b-ul2), or, given ``text_subfolder``, as the releases name it: ``repo_id`` (their own repository)
    + ``subfolder``."""
    t = json.loads((folder / "transformer" / "config.json").read_text())
    v = json.loads((folder / "vae" / "config.json").read_text())
    d = json.loads((folder / "duration_embedder" / "config.json").read_text())
    tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    s = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    hop = v["patch_size"]
    for r in v["encoder_strides"]:
        hop *= r
    same_cfg = {"channels": v["encoder_channels"], "c_mults": v["encoder_c_mults"], "strides": v["encoder_strides"],
                "transformer_depths": v["encoder_transformer_depths"], "latent_dim": v["latent_dim"],
                "sliding_window": [v["sliding_window"], v["sliding_window"]], "differential": True,
                "variable_stride": True, "dim_heads": v["dim_heads"], "ff_mult": v["ff_mult"]}
    patched = v["audio_channels"] * v["patch_size"]
    return {
        "model_type": "diffusion_cond_inpaint", "sample_size": 64 * hop, "sample_rate": v["sampling_rate"],
        "audio_channels": v["audio_channels"],
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "same", "config": {"in_channels": patched, **same_cfg,
                                                       "sinusoidal_blocks": v["encoder_sinusoidal_blocks"]}},
                "decoder": {"type": "same", "config": {"out_channels": patched, **same_cfg,
                                                       "sinusoidal_blocks": v["decoder_sinusoidal_blocks"]}},
                "bottleneck": {"type": "soft_norm", "config": {"dim": v["latent_dim"], "auto_scale": True}},
                "pretransform": {"type": "patched", "config": {"channels": v["audio_channels"],
                                                               "patch_size": v["patch_size"]}},
                "latent_dim": v["latent_dim"], "downsampling_ratio": hop, "io_channels": v["audio_channels"]}},
            "conditioning": {"cond_dim": d["output_dim"], "configs": [
                {"id": "prompt", "type": "t5gemma", "config": {
                    **({"repo_id": text_repo, "subfolder": text_subfolder} if text_subfolder else
                       {"model_name": "google/t5gemma-b-b-ul2"}),
                    "max_length": tok["model_max_length"], "padding_mode": "learned"}},
                {"id": "seconds_total", "type": "number", "config": {
                    "min_val": d["min_val"], "max_val": d["max_val"], "fourier_features_type": "expo"}}]},
            "diffusion": {
                "type": "dit", "diffusion_objective": "rf_denoiser" if s["stochastic_sampling"] else "rectified_flow",
                "cross_attention_cond_ids": ["prompt"], "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"],
                "config": {"io_channels": t["io_channels"], "embed_dim": t["embed_dim"], "depth": t["depth"],
                           "num_heads": t["num_heads"], "cond_token_dim": t["cond_token_dim"],
                           "global_cond_dim": t["global_cond_dim"], "global_cond_type": "adaLN",
                           "timestep_features_type": "expo", "timestep_features_dim": t["timestep_features_dim"],
                           "num_memory_tokens": t["num_memory_tokens"], "local_add_cond_dim": t["local_add_cond_dim"],
                           "norm_type": "rms_norm", "norm_kwargs": {"force_fp32": True},
                           "attn_kwargs": {"differential": True, "qk_norm": "rms"},
                           "ff_kwargs": {"mult": t["ff_mult"]}}},
            "io_channels": t["io_channels"]},
    }


def write_sa3_stability_layout(diffusers_folder: Path, dst: Path, text_beside: bool = True,
                               text_in_checkpoint: bool = False, text_repo: str | None = None,
                               text_subfolder: str | None = None) -> Path:
    """``dst`` = the tiny Stable Audio 3 pipeline in Stability's layout. ``text_beside``: the T5Gemma's
    ``text_encoder/`` and ``tokenizer/`` folders beside it (the hub's google/t5gemma-b-b-ul2 otherwise);
    ``text_in_checkpoint``: its weights also inside ``model.safetensors`` (``conditioner.conditioners.prompt.model.*``,
    as a checkpoint with a trained T5Gemma holds them); ``text_subfolder``: the T5Gemma (config, weights, tokenizer
    in one folder) in that folder of ``dst``, which the config names with ``repo_id`` ``text_repo``, as Stability's
    releases publish it."""
    from diffusers import AutoencoderSAME, StableAudio3DiTModel, StableAudio3DurationEmbedder
    from safetensors.torch import save_file

    net = StableAudio3DiTModel.from_pretrained(str(diffusers_folder / "transformer"), use_safetensors=True)
    vae = AutoencoderSAME.from_pretrained(str(diffusers_folder / "vae"), use_safetensors=True)
    dur = StableAudio3DurationEmbedder.from_pretrained(str(diffusers_folder / "duration_embedder"),
                                                       use_safetensors=True)
    sd: dict = {}
    sa3_dit(sd, "model.model", net)
    same(sd, "pretransform.model", vae)
    sd["conditioner.conditioners.prompt.padding_embedding"] = net.prompt_padding_embedding.detach().clone()
    _emit(sd, "conditioner.conditioners.seconds_total.embedder.embedding.1", dur.linear)
    if text_in_checkpoint:
        from safetensors.torch import load_file

        for k, val in load_file(str(diffusers_folder / "text_encoder" / "model.safetensors")).items():
            sd[f"conditioner.conditioners.prompt.model.{k}"] = val
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"))
    (dst / "model_config.json").write_text(json.dumps(sa3_model_config(diffusers_folder, text_repo, text_subfolder),
                                                      indent=2))
    (dst / "README.md").write_text("---\nlicense: other\nlicense_name: stable-audio-community\n---\n# tiny\n")
    if text_subfolder:
        (dst / text_subfolder).mkdir()
        for f in [*(diffusers_folder / "text_encoder").iterdir(), *(diffusers_folder / "tokenizer").iterdir()]:
            shutil.copyfile(f, dst / text_subfolder / f.name)
    if text_beside:
        shutil.copytree(diffusers_folder / "text_encoder", dst / "text_encoder")
        shutil.copytree(diffusers_folder / "tokenizer", dst / "tokenizer")
    return dst
