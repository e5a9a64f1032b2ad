"""Stability's own checkpoint layout → diffusers' layout, for Stable Audio Open 1.0 and (its own section below)
Stable Audio 3.

Stability AI publishes its releases as stable-audio-tools reads them: ``model_config.json`` (the model's
construction arguments) and one ``model.safetensors`` holding every trained network under stable-audio-tools'
module names: ``model.model.*`` (the DiT), ``pretransform.model.{encoder,decoder}.*`` (the Oobleck autoencoder) and
``conditioner.conditioners.{prompt,seconds_start,seconds_total}.*`` (the conditioners; the T5 text encoder itself
is not in it: stable-audio-tools loads ``t5_model_name`` from the hub). :func:`convert_stability_dir` writes the
same weights as a ``StableAudioPipeline`` folder (``model_index.json`` + one folder per component, safetensors
only) that ``soundry.models.stable_audio.loader`` loads like any other.

The mapping is soundry's own, written from stable-audio-tools' module layout (``models/dit.py``,
``transformer.py``, ``autoencoders.py``, ``conditioners.py``, ``adp.py``) and diffusers' modules, with diffusers'
``scripts/convert_stable_audio.py`` read for the facts (fused ``to_qkv`` / ``to_kv`` split in order, snake
parameters ``[C]`` → ``[1, C, 1]``, the Fourier weight ``[n, 1]`` → ``[n]``, ``LayerNorm`` gamma/beta →
weight/bias). The sizes of the diffusers modules are read from the tensors' shapes (the weights are the truth);
``model_config.json`` gives what shapes cannot (heads, rate, the seconds range, the text length). Every tensor is
placed or named as known-unused (the rotary table, which diffusers recomputes); anything else refuses the file.

Only the architectures mapped here are converted. A ``model_config.json`` naming another model type, autoencoder,
text conditioner or DiT option (for SAO: adaLN, memory tokens, differential attention, ...; for Stable Audio 3,
recognised by its ``t5gemma`` prompt conditioner: see ``check_sa3_config``) is refused with a sentence before any
weight is read. Nothing is unpickled: ``model.ckpt`` is
refused, ``model.safetensors`` read with safetensors.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from soundry.models.errors import CheckpointError

if TYPE_CHECKING:
    import torch

CONFIG = "model_config.json"
WEIGHTS = "model.safetensors"
DONE = ".soundry-converted.json"  # written last: a folder without it is not a finished conversion

# model_config.json, as stable-audio-tools' loader reads it (models/factory.py create_model_from_config,
# diffusion.py create_diffusion_cond_from_config, dit.py DiffusionTransformer, transformer.py ContinuousTransformer /
# TransformerBlock, autoencoders.py create_autoencoder_from_config / OobleckEncoder / OobleckDecoder, pretransforms.py
# AutoencoderPretransform, conditioners.py create_multi_conditioner_from_conditioning_config / T5Conditioner /
# NumberConditioner). Stable Audio Open 1.0's file has this shape (values of that release):
#   model_type "diffusion_cond", sample_size 2097152, sample_rate 44100, audio_channels 2,
#   model.pretransform {type "autoencoder", iterate_batch, config {encoder {type "oobleck", config {in_channels 2,
#     channels 128, c_mults [1,2,4,8,16], strides [2,4,4,8,8], latent_dim 128, use_snake true}}, decoder {type
#     "oobleck", config {out_channels 2, the same channels/c_mults/strides, latent_dim 64, use_snake true,
#     final_tanh false}}, bottleneck {type "vae"}, latent_dim 64, downsampling_ratio 2048, io_channels 2}},
#   model.conditioning {configs [{id "prompt", type "t5", config {t5_model_name "t5-base", max_length 128}},
#     {id "seconds_start" / "seconds_total", type "number", config {min_val 0, max_val 512}}], cond_dim 768},
#   model.diffusion {cross_attention_cond_ids ["prompt","seconds_start","seconds_total"], global_cond_ids
#     ["seconds_start","seconds_total"], type "dit", config {io_channels 64, embed_dim 1536, depth 24, num_heads 24,
#     cond_token_dim 768, global_cond_dim 1536, project_cond_tokens false, transformer_type
#     "continuous_transformer"}} (diffusion_objective absent: "v"), model.io_channels 64, and a ``training`` block
#   (not read here).
# An absent key means stable-audio-tools' default, which is not always Stable Audio Open's (the conditioning ids
# default to none, num_heads to 8, the Oobleck's use_snake to false and final_tanh to true, ...): the defaults below
# are the loader's, so a file converts as stable-audio-tools would build it, or is refused naming the key.

# DiffusionTransformer's sizes (checked against the tensors) and projections, with the loader's defaults
_DIT_DEFAULTS = {"io_channels": 32, "embed_dim": 768, "depth": 12, "num_heads": 8, "cond_token_dim": 0,
                 "global_cond_dim": 0, "project_cond_tokens": True, "project_global_cond": True}
# options mapped only at the value diffusers' StableAudioDiTModel holds (the loader's default where it has one)
_DIT_FIXED = {"transformer_type": "continuous_transformer", "patch_size": 1, "global_cond_type": "prepend",
              "timestep_cond_type": "global", "input_concat_dim": 0, "prepend_cond_dim": 0, "rotary_pos_emb": True,
              "causal": False, "conformer": False, "use_sinusoidal_emb": False, "use_abs_pos_emb": False,
              "num_memory_tokens": 0, "final_cross_attn_ix": -1, "sliding_window": None, "remove_norms": False,
              "add_rope": False, "layer_scale": False, "attn_kwargs": {}, "ff_kwargs": {}, "norm_kwargs": {}}
# options that change nothing in a trained network (initialisation; sizes only read with an option refused above)
_DIT_INERT = {"zero_init_branch_outputs", "timestep_embed_dim", "abs_pos_emb_max_length"}
_DIT_OPTIONS = set(_DIT_DEFAULTS) | set(_DIT_FIXED) | _DIT_INERT
# model.diffusion's own keys (diffusion_objective is read here, not in its config)
_DIFFUSION = {"type", "config", "diffusion_objective", "cross_attention_cond_ids", "global_cond_ids",
              "input_concat_ids", "prepend_cond_ids", "distribution_shift_options"}
_CROSS_IDS, _GLOBAL_IDS = ["prompt", "seconds_start", "seconds_total"], ["seconds_start", "seconds_total"]
# OobleckEncoder / OobleckDecoder arguments and their defaults
_OOBLECK = {"encoder": {"in_channels": 2, "channels": 128, "latent_dim": 32, "c_mults": [1, 2, 4, 8],
                        "strides": [2, 4, 8, 8], "use_snake": False, "antialias_activation": False},
            "decoder": {"out_channels": 2, "channels": 128, "latent_dim": 32, "c_mults": [1, 2, 4, 8],
                        "strides": [2, 4, 8, 8], "use_snake": False, "antialias_activation": False,
                        "use_nearest_upsample": False, "final_tanh": True}}
_T5_OPTIONS = {"t5_model_name": "t5-base", "max_length": 128, "enable_grad": False, "project_out": False}
_NUMBER_OPTIONS = {"min_val": 0, "max_val": 1}
# keys of the checkpoint diffusers does not hold (recomputed there): dropped
_UNUSED = re.compile(r"^model\.model\.transformer\.rotary_pos_emb\.inv_freq$")
T5_REPOS = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base", "t5-large": "google-t5/t5-large",
            "t5-3b": "google-t5/t5-3b", "t5-11b": "google-t5/t5-11b"}


def _check_dit_options(options: dict, known: set, fixed: dict, refuse) -> None:
    """Refuse a DiT option the mapping does not know, or a known one at a value it does not map."""
    unknown = sorted(set(options) - known)
    if unknown:
        refuse(f"the DiT options {unknown} are not mapped")
    for key, want in fixed.items():
        if key in options and options[key] != want:
            refuse(f"the DiT option {key}={options[key]!r} is not mapped")


def dit_options(cfg: dict) -> dict:
    """``model.diffusion.config`` with stable-audio-tools' defaults for the sizes and projections it leaves out."""
    return {**_DIT_DEFAULTS, **(cfg["model"]["diffusion"].get("config") or {})}


def oobleck_options(cfg: dict, part: str) -> dict:
    """``model.pretransform.config.<part>.config`` (encoder / decoder) with OobleckEncoder's / OobleckDecoder's
    defaults for what it leaves out."""
    return {**_OOBLECK[part], **(cfg["model"]["pretransform"]["config"][part].get("config") or {})}


def conditioner_options(cfg: dict, cid: str) -> dict:
    """One SAO conditioner's ``config`` with T5Conditioner's / NumberConditioner's defaults."""
    defaults = _T5_OPTIONS if cid == "prompt" else _NUMBER_OPTIONS
    return {**defaults, **_conditioners(cfg)[cid]}


def _build(cls, config: dict, state: dict, folder: str, dtype: torch.dtype, root: Path) -> None:
    """One diffusers component from its config and converted weights (strictly: every tensor placed), saved as
    safetensors in ``root/folder``."""
    module = cls(**config).to(dtype)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's {folder} does not fit {cls.__name__} "
                              f"({str(exc).splitlines()[0]})") from exc
    module.save_pretrained(str(root / folder), safe_serialization=True)

def is_stability_dir(path: Path | str) -> bool:
    """A folder in Stability's layout (``model_config.json``; its weights are checked on conversion)."""
    return (Path(path) / CONFIG).is_file() and not (Path(path) / "model_index.json").is_file()


def read_config(folder: Path) -> dict:
    """``model_config.json`` after checking that it describes an architecture soundry converts; a sentence
    naming what it describes otherwise."""
    try:
        cfg = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}/{CONFIG} cannot be read ({exc})") from exc
    check_config(cfg, Path(folder) / CONFIG)
    return cfg


def _describe(cfg: dict) -> str:
    model = cfg.get("model") or {}
    pre = ((model.get("pretransform") or {}).get("config") or {})
    conds = {c.get("id"): c.get("type") for c in (model.get("conditioning") or {}).get("configs") or []
             if isinstance(c, dict)}
    return (f"model_type {cfg.get('model_type')!r}, diffusion {(model.get('diffusion') or {}).get('type')!r}, "
            f"autoencoder {((pre.get('encoder') or {}).get('type'))!r}, text conditioner {conds.get('prompt')!r}")


def check_config(cfg: dict, where: Path | str = CONFIG) -> None:
    """Raise CheckpointError (one sentence, naming the key) unless ``cfg`` is Stable Audio Open 1.0's or Stable
    Audio 3's architecture (a T5Gemma prompt conditioner: check_sa3_config), read as stable-audio-tools reads it
    (its defaults for what is absent)."""
    if is_sa3_config(cfg):
        check_sa3_config(cfg, where)
        return

    def refuse(why: str):
        raise CheckpointError(
            f"{where} describes {_describe(cfg) if isinstance(cfg, dict) else 'no model'}: {why}; soundry converts "
            "Stable Audio Open 1.0's layout (diffusion_cond, a dit over an oobleck VAE, t5 prompt and "
            "seconds_start/seconds_total numbers) and Stable Audio 3's (a t5gemma prompt conditioner)")

    if not isinstance(cfg, dict):
        refuse("it is not a JSON object")
    if cfg.get("model_type") != "diffusion_cond":
        refuse("the model type is not mapped")
    for key in ("sample_rate", "sample_size"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            refuse(f"its {key} is {cfg.get(key)!r}, not a positive whole number")
    model = cfg.get("model") or {}
    diffusion = model.get("diffusion") or {}
    if diffusion.get("type") != "dit":
        refuse("the diffusion network is not mapped")
    unknown = sorted(set(diffusion) - _DIFFUSION)
    if unknown:
        refuse(f"the diffusion options {unknown} are not mapped")
    if diffusion.get("diffusion_objective", "v") != "v":
        refuse(f"the diffusion objective {diffusion['diffusion_objective']!r} is not mapped (model.diffusion."
               "diffusion_objective: Stable Audio Open's is 'v', the default)")
    for key, want in (("cross_attention_cond_ids", _CROSS_IDS), ("global_cond_ids", _GLOBAL_IDS),
                      ("input_concat_ids", []), ("prepend_cond_ids", [])):
        if list(diffusion.get(key) or []) != want:  # stable-audio-tools' default: none
            refuse(f"model.diffusion.{key} is {diffusion.get(key, [])!r}, not the {want!r} diffusers' "
                   "StableAudioPipeline conditions on")
    if diffusion.get("distribution_shift_options") is not None:
        refuse("model.diffusion.distribution_shift_options is not mapped")
    if not isinstance(diffusion.get("config"), dict):
        refuse("model.diffusion has no config")
    options = diffusion["config"]
    _check_dit_options(options, _DIT_OPTIONS, _DIT_FIXED, refuse)
    pre = model.get("pretransform") or {}
    pcfg = pre.get("config") or {}
    if (pre.get("type") != "autoencoder" or (pcfg.get("encoder") or {}).get("type") != "oobleck"
            or (pcfg.get("decoder") or {}).get("type") != "oobleck"
            or (pcfg.get("bottleneck") or {}).get("type") != "vae"):
        refuse("the autoencoder is not mapped")
    if pre.get("scale", 1.0) != 1.0:  # AutoencoderPretransform divides the latents by it; diffusers' VAE does not
        refuse(f"model.pretransform.scale {pre['scale']!r} is not mapped")
    if pcfg.get("pretransform") is not None:
        refuse("a pretransform inside the autoencoder (model.pretransform.config.pretransform) is not mapped")
    if pcfg["decoder"].get("soft_clip"):
        refuse("the decoder's soft_clip is not mapped")
    for key in ("latent_dim", "downsampling_ratio", "io_channels"):  # the loader requires these three
        if not isinstance(pcfg.get(key), int):
            refuse(f"model.pretransform.config.{key} is {pcfg.get(key)!r}, not a whole number")
    for part in ("encoder", "decoder"):
        unknown = sorted(set(pcfg[part].get("config") or {}) - set(_OOBLECK[part]))
        if unknown:
            refuse(f"the {part} options {unknown} are not mapped")
        pc = oobleck_options(cfg, part)
        if pc["use_snake"] is not True:  # OobleckEncoder / OobleckDecoder default: ELU
            refuse(f"model.pretransform.config.{part}.config.use_snake is {pc['use_snake']!r}: only snake "
                   "activations are mapped")
        for key in ("antialias_activation", "use_nearest_upsample", "final_tanh"):
            if pc.get(key):  # final_tanh defaults to true in OobleckDecoder
                refuse(f"model.pretransform.config.{part}.config.{key}={pc[key]!r} is not mapped")
    enc, dec = oobleck_options(cfg, "encoder"), oobleck_options(cfg, "decoder")
    for key in ("channels", "c_mults", "strides"):
        if enc[key] != dec[key]:
            refuse(f"the encoder and decoder differ in {key} (AutoencoderOobleck has one)")
    if not (enc["in_channels"] == dec["out_channels"] == pcfg.get("in_channels", pcfg["io_channels"])
            == pcfg.get("out_channels", pcfg["io_channels"]) == pcfg["io_channels"]):
        refuse("the encoder's in_channels, the decoder's out_channels and model.pretransform.config.io_channels "
               "differ")
    if math.prod(enc["strides"]) != pcfg["downsampling_ratio"]:
        refuse(f"model.pretransform.config.downsampling_ratio {pcfg['downsampling_ratio']} is not the product of "
               f"the strides {enc['strides']}")
    if not (dec["latent_dim"] == pcfg["latent_dim"] and enc["latent_dim"] == 2 * dec["latent_dim"]):
        refuse("the VAE's latent_dim (model.pretransform.config.latent_dim, the decoder's, half the encoder's) "
               "does not agree")
    if options.get("io_channels", _DIT_DEFAULTS["io_channels"]) != pcfg["latent_dim"] or model.get(
            "io_channels", pcfg["latent_dim"]) != pcfg["latent_dim"]:
        refuse("the DiT's io_channels (model.diffusion.config.io_channels, model.io_channels) is not the VAE's "
               "latent_dim")
    conditioning = model.get("conditioning") or {}
    conds = {c.get("id"): c for c in conditioning.get("configs") or [] if isinstance(c, dict)}
    if set(conds) != {"prompt", "seconds_start", "seconds_total"} or conds["prompt"].get("type") != "t5" or any(
            conds[k].get("type") != "number" for k in ("seconds_start", "seconds_total")):
        refuse("the conditioners are not mapped (a t5 prompt and seconds_start / seconds_total numbers are)")
    if not isinstance(conditioning.get("cond_dim"), int):
        refuse(f"model.conditioning.cond_dim is {conditioning.get('cond_dim')!r}, not a whole number")
    for cid, known in (("prompt", _T5_OPTIONS), ("seconds_start", _NUMBER_OPTIONS),
                       ("seconds_total", _NUMBER_OPTIONS)):
        unknown = sorted(set(conds[cid].get("config") or {}) - set(known))
        if unknown:
            refuse(f"the {cid} conditioner options {unknown} are not mapped")
    if conditioner_options(cfg, "prompt")["enable_grad"]:
        refuse("a T5 trained with the model (the prompt conditioner's enable_grad) is not mapped")
    start, total = conditioner_options(cfg, "seconds_start"), conditioner_options(cfg, "seconds_total")
    if (start["min_val"], start["max_val"]) != (total["min_val"], total["max_val"]):
        refuse("seconds_start and seconds_total have different min_val / max_val (StableAudioProjectionModel "
               "holds one range)")
    dit = dit_options(cfg)
    if dit["cond_token_dim"] != conditioning["cond_dim"] or dit["global_cond_dim"] != 2 * conditioning["cond_dim"]:
        refuse(f"the DiT's cond_token_dim {dit['cond_token_dim']} / global_cond_dim {dit['global_cond_dim']} are "
               f"not model.conditioning.cond_dim {conditioning['cond_dim']} / twice it (the prompt's tokens and the "
               "two seconds embeddings)")
    if not isinstance(dit["num_heads"], int) or dit["num_heads"] <= 0 or dit["embed_dim"] % dit["num_heads"]:
        refuse(f"the DiT's embed_dim {dit['embed_dim']} is not a multiple of num_heads {dit['num_heads']}")


# -- the mapping ------------------------------------------------------------------------------------------------
def _split(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def dit_state(sd: dict) -> dict:
    """stable-audio-tools ``DiffusionTransformer`` keys (without ``model.model.``) → ``StableAudioDiTModel``'s."""
    top = {"timestep_features.weight": "time_proj.weight", "transformer.project_in.weight": "proj_in.weight",
           "transformer.project_out.weight": "proj_out.weight", "preprocess_conv.weight": "preprocess_conv.weight",
           "postprocess_conv.weight": "postprocess_conv.weight"}
    seqs = {"to_timestep_embed.": "timestep_proj.", "to_cond_embed.": "cross_attention_proj.",
            "to_global_embed.": "global_proj."}
    block = {"pre_norm.gamma": "norm1.weight", "pre_norm.beta": "norm1.bias",
             "cross_attend_norm.gamma": "norm2.weight", "cross_attend_norm.beta": "norm2.bias",
             "ff_norm.gamma": "norm3.weight", "ff_norm.beta": "norm3.bias",
             "self_attn.to_out.weight": "attn1.to_out.0.weight", "cross_attn.to_q.weight": "attn2.to_q.weight",
             "cross_attn.to_out.weight": "attn2.to_out.0.weight", "ff.ff.0.proj.weight": "ff.net.0.proj.weight",
             "ff.ff.0.proj.bias": "ff.net.0.proj.bias", "ff.ff.2.weight": "ff.net.2.weight",
             "ff.ff.2.bias": "ff.net.2.bias"}
    out, left = {}, []
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value.reshape(-1) if key == "timestep_features.weight" else value
            continue
        seq = next((p for p in seqs if key.startswith(p)), None)
        if seq is not None:
            out[seqs[seq] + key[len(seq):]] = value
            continue
        m = re.match(r"^transformer\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            left.append(key)
            continue
        i, rest = m.groups()
        dst = f"transformer_blocks.{i}."
        if rest == "self_attn.to_qkv.weight":
            q, k, v = value.chunk(3, dim=0)
            out.update({dst + "attn1.to_q.weight": q, dst + "attn1.to_k.weight": k, dst + "attn1.to_v.weight": v})
        elif rest == "cross_attn.to_kv.weight":
            k, v = value.chunk(2, dim=0)
            out.update({dst + "attn2.to_k.weight": k, dst + "attn2.to_v.weight": v})
        elif rest in block:
            out[dst + block[rest]] = value
        else:
            left.append(key)
    if left:
        raise CheckpointError(f"DiT tensors soundry does not map: {sorted(left)[:5]}")
    return out


_RES = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}  # ResidualUnit.layers


def _snake(name: str, value):
    return value.reshape(1, -1, 1) if name.rsplit(".", 1)[-1] in ("alpha", "beta") else value


def oobleck_state(sd: dict, depth: int) -> dict:
    """stable-audio-tools ``OobleckEncoder`` / ``OobleckDecoder`` keys (``encoder.layers.*``,
    ``decoder.layers.*``) → ``AutoencoderOobleck``'s, for ``depth`` down/up-sampling blocks.

    Encoder layers: [conv, EncoderBlock × depth, snake, conv]; an EncoderBlock's: [ResidualUnit × 3, snake, conv].
    Decoder layers: [conv, DecoderBlock × depth, snake, conv(, tanh)]; a DecoderBlock's: [snake, conv-transpose,
    ResidualUnit × 3]. A ResidualUnit's: [snake, conv, snake, conv]."""
    out, left = {}, []
    for key, value in sd.items():
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            left.append(key)
            continue
        part, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if idx == 0:
            name = "conv1." + rest
        elif idx == depth + 1:
            name = "snake1." + rest
        elif idx == depth + 2:
            name = "conv2." + rest
        elif 1 <= idx <= depth:
            b = re.match(r"^layers\.(\d)\.(.+)$", rest)
            if b is None:
                left.append(key)
                continue
            j, tail = int(b.group(1)), b.group(2)
            res_slots = (0, 1, 2) if part == "encoder" else (2, 3, 4)
            if j in res_slots:
                r = re.match(r"^layers\.(\d)\.(.+)$", tail)
                if r is None or r.group(1) not in _RES:
                    left.append(key)
                    continue
                sub = f"res_unit{res_slots.index(j) + 1}.{_RES[r.group(1)]}.{r.group(2)}"
            elif part == "encoder" and j in (3, 4):
                sub = ("snake1." if j == 3 else "conv1.") + tail
            elif part == "decoder" and j in (0, 1):
                sub = ("snake1." if j == 0 else "conv_t1.") + tail
            else:
                left.append(key)
                continue
            name = f"block.{idx - 1}.{sub}"
        else:
            left.append(key)
            continue
        out[f"{part}.{name}"] = _snake(name, value)
    if left:
        raise CheckpointError(f"autoencoder tensors soundry does not map: {sorted(left)[:5]}")
    return out


def projection_state(sd: dict) -> dict:
    """``conditioner.conditioners.*`` (without the prefix) → ``StableAudioProjectionModel``'s: the T5 conditioner's
    ``proj_out`` (absent when it is Identity) and the two ``NumberConditioner`` embedders."""
    names = {"prompt.proj_out.": "text_projection.",
             "seconds_start.embedder.embedding.": "start_number_conditioner.time_positional_embedding.",
             "seconds_total.embedder.embedding.": "end_number_conditioner.time_positional_embedding."}
    out, left = {}, []
    for key, value in sd.items():
        src = next((p for p in names if key.startswith(p)), None)
        if src is None:
            left.append(key)
        else:
            out[names[src] + key[len(src):]] = value
    if left:
        raise CheckpointError(f"conditioner tensors soundry does not map: {sorted(left)[:5]} (a text encoder "
                              "trained inside the checkpoint is not mapped)")
    return out


def split_checkpoint(sd: dict, cfg: dict) -> tuple[dict, dict, dict]:
    """(DiT, autoencoder, projection) state dicts in diffusers' names from a Stability ``model.safetensors``."""
    known = ("model.model.", "pretransform.model.", "conditioner.conditioners.")
    stray = sorted(k for k in sd if not k.startswith(known) and not _UNUSED.match(k))
    if stray:
        raise CheckpointError(f"tensors outside the DiT, autoencoder and conditioners: {stray[:5]}")
    sd = {k: v for k, v in sd.items() if not _UNUSED.match(k)}
    depth = len(oobleck_options(cfg, "encoder")["strides"])
    return (dit_state(_split(sd, "model.model.")), oobleck_state(_split(sd, "pretransform.model."), depth),
            projection_state(_split(sd, "conditioner.conditioners.")))


# -- the diffusers configs ----------------------------------------------------------------------------------------
def dit_config(cfg: dict, dit: dict) -> dict:
    """``StableAudioDiTModel``'s arguments: sizes from the tensors (checked against ``model.diffusion.config``,
    stable-audio-tools' defaults for what it leaves out), the heads and the length from the config."""
    options = dit_options(cfg)
    pre = cfg["model"]["pretransform"]["config"]
    heads = int(options["num_heads"])
    try:
        embed, io = dit["proj_in.weight"].shape[0], dit["preprocess_conv.weight"].shape[0]
        cond_in, cond_out = dit["cross_attention_proj.0.weight"].shape[1], dit["cross_attention_proj.0.weight"].shape[0]
        glob_in, glob_out = dit["global_proj.0.weight"].shape[1], dit["global_proj.0.weight"].shape[0]
        kv_rows, time_half = dit["transformer_blocks.0.attn2.to_k.weight"].shape[0], dit["time_proj.weight"].shape[0]
        out_channels = dit["postprocess_conv.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint's DiT has no {exc.args[0]} (after mapping): not Stable Audio Open's "
                              "DiT") from exc
    layers = len({k.split(".")[1] for k in dit if k.startswith("transformer_blocks.")})
    found = {"embed_dim": embed, "depth": layers, "io_channels": io, "cond_token_dim": cond_in,
             "global_cond_dim": glob_in}
    for key, size in found.items():
        if int(options[key]) != size:
            raise CheckpointError(f"model_config.json's model.diffusion.config.{key} is {options[key]}"
                                  f"{'' if key in cfg['model']['diffusion']['config'] else ' (the default)'} but "
                                  f"the checkpoint's DiT has {size}")
    for key, width, own in (("project_cond_tokens", cond_out, cond_in), ("project_global_cond", glob_out, glob_in)):
        want = embed if options[key] else own  # DiffusionTransformer: projected to embed_dim, else kept as wide
        if width != want:
            raise CheckpointError(f"model_config.json's model.diffusion.config.{key} is {options[key]} but the "
                                  f"checkpoint's projection is {width} wide, not {want}")
    head_dim = embed // heads
    return {"sample_size": int(cfg["sample_size"]) // int(pre["downsampling_ratio"]),
            "in_channels": io, "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": heads,
            "num_key_value_attention_heads": kv_rows // head_dim,
            "out_channels": out_channels,
            "cross_attention_dim": cond_out,
            "time_proj_dim": 2 * time_half,
            "global_states_input_dim": glob_in,
            "cross_attention_input_dim": cond_in}


def vae_config(cfg: dict) -> dict:
    """``AutoencoderOobleck``'s arguments from the Oobleck options (OobleckEncoder's / OobleckDecoder's defaults for
    what is absent; check_config has refused an encoder and decoder that differ)."""
    pre = cfg["model"]["pretransform"]["config"]
    enc, dec = oobleck_options(cfg, "encoder"), oobleck_options(cfg, "decoder")
    return {"encoder_hidden_size": enc["channels"], "downsampling_ratios": list(enc["strides"]),
            "channel_multiples": list(enc["c_mults"]), "decoder_channels": dec["channels"],
            "decoder_input_channels": dec["latent_dim"], "audio_channels": pre["io_channels"],
            "sampling_rate": int(cfg["sample_rate"])}


def _conditioners(cfg: dict) -> dict:
    return {c["id"]: c.get("config") or {} for c in cfg["model"]["conditioning"]["configs"]}


# -- the whole folder --------------------------------------------------------------------------------------------
def _check_text_parts(text_encoder: Path, tokenizer: Path) -> None:
    """The T5 folders hold what is read from them: a config and safetensors weights, tokenizer files (only these
    are copied; a pickle beside them is never read)."""
    if not (text_encoder / "config.json").is_file() or not any(text_encoder.glob("*.safetensors")):
        raise CheckpointError(f"the T5 text encoder folder {text_encoder} has no config.json and .safetensors "
                              "weights (soundry reads safetensors only)")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "spiece.model")):
        raise CheckpointError(f"the tokenizer folder {tokenizer} has neither tokenizer.json nor spiece.model")


def convert_stability_dir(src: Path | str, dst: Path | str, text_encoder: Path | str | None = None,
                          tokenizer: Path | str | None = None) -> Path:
    """Write ``src`` (Stability's layout) as a ``StableAudioPipeline`` folder at ``dst`` (Stable Audio 3: a
    ``StableAudio3Pipeline`` one, ``convert_sa3_dir``), atomically: built in a temporary folder beside it and renamed
    into place whole (a failed conversion leaves nothing at ``dst``).

    The T5 (SA3: T5Gemma) encoder and tokenizer (transformers' layout, safetensors) are ``text_encoder`` /
    ``tokenizer``, else ``src``'s own ``text_encoder/`` and ``tokenizer/`` folders. Raises CheckpointError with a
    sentence."""
    import torch
    from safetensors import safe_open

    src, dst = Path(src), Path(dst)
    cfg = read_config(src)
    if not (src / WEIGHTS).is_file():
        pickled = [f.name for f in src.iterdir() if f.suffix in (".ckpt", ".pt", ".pth", ".bin")]
        raise CheckpointError(f"{src} has no {WEIGHTS}" + (f" (only {', '.join(pickled)}: a pickle that can run "
                                                              "code, which soundry never reads)" if pickled else ""))
    text_encoder = Path(text_encoder) if text_encoder else src / "text_encoder"
    tokenizer = Path(tokenizer) if tokenizer else src / "tokenizer"
    sa3 = is_sa3_config(cfg)
    if not sa3:
        _check_text_parts(text_encoder, tokenizer)
    try:
        with safe_open(str(src / WEIGHTS), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise CheckpointError(f"{src / WEIGHTS} cannot be read as safetensors ({exc})") from exc
    if sa3:
        dst.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            convert_sa3_dir(src, work, cfg, sd, text_encoder, tokenizer)
            del sd
            _finish(src, work, dst)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return dst
    dit_sd, vae_sd, proj_sd = split_checkpoint(sd, cfg)
    del sd
    te_cfg = json.loads((text_encoder / "config.json").read_text())
    cond_dim = int(cfg["model"]["conditioning"]["cond_dim"])
    t5_dim = int(te_cfg.get("d_model", 0))
    if "text_projection.weight" not in proj_sd and t5_dim != cond_dim:
        raise CheckpointError(f"the text encoder in {text_encoder} is {t5_dim} wide but the checkpoint's prompt "
                              f"conditioner has no projection to its {cond_dim}: not the T5 it was trained with")
    if conditioner_options(cfg, "prompt")["project_out"] and t5_dim == cond_dim:
        raise CheckpointError(f"model_config.json's prompt conditioner has project_out with a T5 as wide as cond_dim "
                              f"({cond_dim}): a projection StableAudioProjectionModel does not hold at equal widths")
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        _write_pipeline(work, cfg, dit_sd, vae_sd, proj_sd, t5_dim, cond_dim, text_encoder, tokenizer,
                        dtype=next(iter(dit_sd.values())).dtype if dit_sd else torch.float32)
        _finish(src, work, dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dst


def _finish(src: Path, work: Path, dst: Path) -> None:
    """The card and licence copied, the done-marker written last, the folder renamed into place whole."""
    for f in ("README.md", "LICENSE.md", "LICENSE"):  # the card (licence) travels with the weights
        if (src / f).is_file():
            shutil.copyfile(src / f, work / f)
    (work / DONE).write_text(json.dumps({"from": str(src), "layout": "stability", "converter": "soundry"}))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(work, dst)


def _write_pipeline(work: Path, cfg: dict, dit_sd: dict, vae_sd: dict, proj_sd: dict, t5_dim: int,
                    cond_dim: int, text_encoder: Path, tokenizer: Path, dtype) -> None:
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioProjectionModel,
    )

    build = functools.partial(_build, dtype=dtype, root=work)

    build(StableAudioDiTModel, dit_config(cfg, dit_sd), dit_sd, "transformer")
    build(AutoencoderOobleck, vae_config(cfg), vae_sd, "vae")
    start = conditioner_options(cfg, "seconds_start")  # seconds_total's range is the same (check_config)
    build(StableAudioProjectionModel, {"text_encoder_dim": t5_dim, "conditioning_dim": cond_dim,
                                       "min_value": start["min_val"], "max_value": start["max_val"]},
          proj_sd, "projection_model")
    # the release's sampler settings (stable-audio-tools' defaults for this model, as diffusers' script sets them)
    CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, solver_order=2, prediction_type="v_prediction",
                                      sigma_data=1.0, sigma_schedule="exponential").save_pretrained(
        str(work / "scheduler"))
    _copy_text_encoder(text_encoder, work / "text_encoder")
    _copy_files(tokenizer, work / "tokenizer", lambda n: n in _TOKENIZER_FILES)
    max_length = conditioner_options(cfg, "prompt")["max_length"]  # T5Conditioner's default: 128
    tok_cfg_path = work / "tokenizer" / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    tok_cfg["model_max_length"] = int(max_length)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    te_class = "T5EncoderModel"
    tok_class = tok_cfg.get("tokenizer_class") or "T5Tokenizer"
    tok_class = tok_class if tok_class in ("T5Tokenizer", "T5TokenizerFast") else "T5Tokenizer"
    te_config_path = work / "text_encoder" / "config.json"
    te_cfg = json.loads(te_config_path.read_text())
    te_cfg["architectures"] = [te_class]  # a T5ForConditionalGeneration checkpoint: its encoder is what is read
    te_config_path.write_text(json.dumps(te_cfg, indent=2))
    index = {"_class_name": "StableAudioPipeline", "_diffusers_version": _diffusers_version(),
             "projection_model": ["stable_audio", "StableAudioProjectionModel"],
             "scheduler": ["diffusers", "CosineDPMSolverMultistepScheduler"],
             "text_encoder": ["transformers", te_class], "tokenizer": ["transformers", tok_class],
             "transformer": ["diffusers", "StableAudioDiTModel"], "vae": ["diffusers", "AutoencoderOobleck"]}
    (work / "model_index.json").write_text(json.dumps(index, indent=2))


_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json",
                    "added_tokens.json"}
_WEIGHTS = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")


def _copy_files(src: Path, dst: Path, keep) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and keep(f.name):
            shutil.copyfile(f, dst / f.name)


def _copy_text_encoder(src: Path, dst: Path) -> None:
    """The T5 encoder's config and safetensors weights; a whole T5 (encoder and decoder, as google-t5/t5-base is
    published) is loaded as its encoder and saved again, so only the encoder's weights are kept."""
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("architectures") in (None, ["T5EncoderModel"]):
        _copy_files(src, dst, lambda n: n == "config.json" or bool(_WEIGHTS.match(n)))
        return
    from transformers import T5EncoderModel

    model = T5EncoderModel.from_pretrained(str(src), local_files_only=True, use_safetensors=True)
    model.save_pretrained(str(dst), safe_serialization=True)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def is_converted(path: Path | str) -> bool:
    return (Path(path) / DONE).is_file() and (Path(path) / "model_index.json").is_file()


def converted_root() -> Path:
    """Where converted folders live: ``SOUNDRY_CONVERTED_DIR``, else ``$XDG_CACHE_HOME/soundry/converted``
    (``~/.cache/soundry/converted``)."""
    if os.environ.get("SOUNDRY_CONVERTED_DIR"):
        return Path(os.environ["SOUNDRY_CONVERTED_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "soundry" / "converted"


def converted_dir_for(src: Path | str) -> Path:
    """The folder a Stability-layout ``src`` converts into: named by the checkpoint it comes from (its resolved
    path, size and time), so a changed checkpoint converts again and an unchanged one is converted once."""
    import hashlib

    src = Path(src).expanduser().resolve()
    weights = (src / WEIGHTS).resolve()
    st = weights.stat() if weights.is_file() else None
    stamp = f"{src}|{weights}|{st.st_size if st else 0}|{st.st_mtime_ns if st else 0}|{(src / CONFIG).read_text()}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    label = src.name if src.parent.name != "snapshots" else src.parent.parent.name.replace("models--", "")
    return converted_root() / f"{re.sub(r'[^A-Za-z0-9._-]', '_', label)}-{digest}"



# == Stable Audio 3 ===============================================================================================
# Stability publishes Stable Audio 3 (stabilityai/stable-audio-3-*) as Stability-AI/stable-audio-3 reads it:
# ``model_config.json`` + ``model.safetensors`` holding ``model.model.*`` (the DiT: ``DiffusionTransformer`` →
# ``ContinuousTransformer``, adaLN global conditioning, memory tokens, differential attention, per-block local
# embeddings for inpainting), ``pretransform.model.{encoder,decoder,bottleneck}.*`` (the SAME autoencoder:
# ``SAMEEncoder.layers`` = [TransformerResamplingBlock × depth, Transpose, Linear, Transpose], ``SAMEDecoder.layers``
# = [Transpose, Linear, Transpose, TransformerResamplingBlock × depth], ``SoftNormBottleneck``) and
# ``conditioner.conditioners.{prompt,seconds_total}.*`` (the T5Gemma conditioner's learned padding embedding, and
# the T5Gemma encoder itself only when it was trained, ``prompt.model.*``; the seconds ``NumberConditioner`` with
# exponential Fourier features). The frozen T5Gemma and its tokenizer come from the hub repository the config names
# (``model_path`` / ``repo_id`` / ``model_name``, default ``google/t5gemma-b-b-ul2``), in its ``subfolder`` when it
# names one (the releases point at the ``t5gemma-b-b-ul2/`` folder of their own repository). The facts of the
# mapping are diffusers' ``scripts/convert_stable_audio_3_to_diffusers.py``'s (the self-attention ``to_qkv`` reorder
# [q|k|v|q2|k2] → [q1|q2|k1|k2|v], the SAME norm / feed-forward renames, the bottleneck's ``scaling_factor`` →
# ``scale``, the padding embedding moved onto the DiT, the duration embedder's ``freqs`` computed); the rules below
# are soundry's, and unlike that script they place or refuse every tensor and option.
SA3_T5GEMMA = "google/t5gemma-b-b-ul2"
_SA3_DIT_FIXED = {"patch_size": 1, "transformer_type": "continuous_transformer", "global_cond_type": "adaLN",
                  "timestep_cond_type": "global", "timestep_features_type": "expo", "project_cond_tokens": True,
                  "project_global_cond": True, "rotary_pos_emb": True, "input_concat_dim": 0, "prepend_cond_dim": 0,
                  "cross_attn_rotary_pos_emb": False, "use_sinusoidal_emb": False, "use_abs_pos_emb": False,
                  "conformer": False, "causal": False, "final_cross_attn_ix": -1, "timestep_features_logsnr": False,
                  "sliding_window": None, "layer_scale": False, "add_rope": False}
# norm_type is required: TransformerBlock's default is layer_norm, the DiT diffusers holds is RMS-normed (its
# StableAudio3RMSNorm: "the reference uses norm_type='rms_norm' with force_fp32=True")
_SA3_DIT_OPTIONS = set(_SA3_DIT_FIXED) | {"io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim",
                                          "global_cond_dim", "timestep_features_dim", "num_memory_tokens",
                                          "local_add_cond_dim", "attn_kwargs", "ff_kwargs", "zero_init_branch_outputs",
                                          "norm_type", "norm_kwargs", "timestep_embed_dim", "abs_pos_emb_max_length"}
_SA3_ATTN = {"differential", "qk_norm", "qk_norm_eps"}
_SA3_FF = {"mult", "no_bias"}
_SA3_NORM = {"force_fp32", "eps"}
# model.diffusion's keys (Stability-AI/stable-audio-3 factory.py create_diffusion_cond_from_config); the id lists and
# modular_local_cond_configs that must stay empty are checked below
_SA3_DIFFUSION = {"type", "config", "diffusion_objective", "cross_attention_cond_ids", "global_cond_ids",
                  "local_add_cond_ids", "distribution_shift_options", "sampling_distribution_shift_options",
                  "mask_padding_attention", "use_effective_length_for_schedule", "input_concat_ids",
                  "prepend_cond_ids", "modular_local_cond_configs"}
# its loader builds the same network for both (inpainting adds local_add_cond_ids inputs, whose weights are kept)
_SA3_MODEL_TYPES = ("diffusion_cond", "diffusion_cond_inpaint")
_SA3_OBJECTIVES = {"rectified_flow", "rf_denoiser"}
_SAME_OPTIONS = {"in_channels", "out_channels", "channels", "latent_dim", "c_mults", "strides", "transformer_depths",
                 "sliding_window", "checkpointing", "differential", "variable_stride", "sinusoidal_blocks",
                 "dim_heads", "mask_noise", "freeze_backbone", "ff_mult", "dyt", "conformer", "layer_scale", "causal",
                 "conv_mapping", "feat_scale", "cross_attn", "mapping_bias"}
_SAME_OFF = ("conformer", "layer_scale", "causal", "conv_mapping", "feat_scale", "cross_attn")
_SA3_AE = {"encoder", "decoder", "bottleneck", "pretransform", "latent_dim", "downsampling_ratio", "io_channels",
           "in_channels", "out_channels"}
_SA3_PROMPT = {"model_name", "max_length", "enable_grad", "project_out", "padding_mode", "model_path", "repo_id",
               "subfolder"}


def is_sa3_config(cfg: dict) -> bool:
    """A ``model_config.json`` whose prompt conditioner is T5Gemma: Stable Audio 3's (checked by check_config)."""
    model = cfg.get("model") if isinstance(cfg, dict) else None
    configs = ((model or {}).get("conditioning") or {}).get("configs") or [] if isinstance(model, dict) else []
    return any(isinstance(c, dict) and c.get("id") == "prompt" and c.get("type") == "t5gemma" for c in configs)


def check_sa3_config(cfg: dict, where: Path | str = CONFIG) -> None:
    """Raise CheckpointError (one sentence) unless ``cfg`` is Stable Audio 3's architecture as diffusers'
    ``StableAudio3Pipeline`` holds it."""
    def refuse(why: str):
        raise CheckpointError(
            f"{where} describes {_describe(cfg)}: {why}; soundry converts Stable Audio 3's layout only as "
            "diffusers' StableAudio3Pipeline holds it (a dit with adaLN, expo timestep features and differential "
            "attention over a SAME autoencoder, a t5gemma prompt with a learned padding embedding and a "
            "seconds_total number)")

    if cfg.get("model_type") not in _SA3_MODEL_TYPES:
        refuse("the model type is not mapped")
    model = cfg.get("model") or {}
    diffusion = model.get("diffusion") or {}
    if diffusion.get("type", "dit") != "dit":  # Stability-AI/stable-audio-3 builds a DiT whatever it says
        refuse("the diffusion network is not mapped")
    unknown = sorted(set(diffusion) - _SA3_DIFFUSION)
    if unknown:
        refuse(f"the diffusion options {unknown} are not mapped")
    if diffusion.get("diffusion_objective", "v") not in _SA3_OBJECTIVES:
        refuse(f"the diffusion objective {diffusion.get('diffusion_objective', 'v')!r} is not mapped")
    if diffusion.get("cross_attention_cond_ids") != ["prompt"] or diffusion.get("global_cond_ids") != [
            "seconds_total"]:  # local_add_cond_ids (inpainting inputs): not text-to-audio's, the weights are kept
        refuse("the conditioning order is not mapped")
    for key in ("input_concat_ids", "prepend_cond_ids", "modular_local_cond_configs"):
        if diffusion.get(key):
            refuse(f"model.diffusion.{key} is not mapped")
    options = diffusion.get("config") or {}
    _check_dit_options(options, _SA3_DIT_OPTIONS, _SA3_DIT_FIXED, refuse)
    for key, allowed in (("attn_kwargs", _SA3_ATTN), ("ff_kwargs", _SA3_FF), ("norm_kwargs", _SA3_NORM)):
        extra = sorted(set(options.get(key) or {}) - allowed)
        if extra:
            refuse(f"the DiT's {key} {extra} are not mapped")
    if (options.get("ff_kwargs") or {}).get("no_bias"):
        refuse("a DiT feed-forward without bias is not mapped")
    if options.get("norm_type", "layer_norm") != "rms_norm":
        refuse(f"the DiT's norm_type {options.get('norm_type', 'layer_norm')!r} (model.diffusion.config.norm_type; "
               "absent: layer_norm) is not mapped, only rms_norm")
    attn = options.get("attn_kwargs") or {}
    if attn.get("qk_norm", "none") != "rms" or attn.get("differential", False) is not True:
        refuse("the DiT's attn_kwargs must be differential with qk_norm 'rms' (Attention's defaults: neither)")
    pre = model.get("pretransform") or {}
    pcfg = pre.get("config") or {}
    # Stability-AI/stable-audio-3 reads no type here (nor the encoder's, decoder's, bottleneck's): SAME, always
    if pre.get("type", "autoencoder") != "autoencoder" or not all(isinstance(pcfg.get(p), dict)
                                                                  for p in ("encoder", "decoder")):
        refuse("the autoencoder is not mapped")
    unknown = sorted(set(pcfg) - _SA3_AE)
    if unknown:
        refuse(f"the autoencoder options {unknown} are not mapped")
    for part in ("encoder", "decoder"):
        if pcfg[part].get("type", "same") != "same":
            refuse(f"the {part} type {pcfg[part].get('type')!r} is not mapped")
        if part == "decoder" and pcfg[part].get("soft_clip"):
            refuse("the decoder's soft clip is not mapped")
        pc = pcfg[part].get("config") or {}
        unknown = sorted(set(pc) - _SAME_OPTIONS)
        if unknown:
            refuse(f"the {part} options {unknown} are not mapped")
        on = [k for k in _SAME_OFF if pc.get(k)]
        if on or pc.get("dyt", True) is not True or not pc.get("differential", True):
            refuse(f"the {part} options {on or ['dyt', 'differential']} are not mapped")
    enc, dec = pcfg["encoder"].get("config") or {}, pcfg["decoder"].get("config") or {}
    for key in ("channels", "c_mults", "strides", "transformer_depths", "latent_dim", "sliding_window"):
        if enc.get(key) != dec.get(key):
            raise CheckpointError(f"{where}: the SAME encoder and decoder differ in {key}; AutoencoderSAME has one")
    patcher = ((pcfg.get("pretransform") or {}).get("config") or {})
    if patcher.get("oversampling", 1) != 1 or patcher.get("postfilter_channels", 0):
        refuse("the patcher's oversampling / post-filter is not mapped")
    bottleneck = ((pcfg.get("bottleneck") or {}).get("config") or {})
    if bottleneck.get("noise_augment_dim", 0) or bottleneck.get("noise_regularize"):
        refuse("a bottleneck with noise augmentation is not mapped")
    conds = {c.get("id"): c for c in (model.get("conditioning") or {}).get("configs") or [] if isinstance(c, dict)}
    if set(conds) != {"prompt", "seconds_total"} or conds["seconds_total"].get("type") != "number":
        refuse("the conditioners are not mapped")
    prompt = conds["prompt"].get("config") or {}
    unknown = sorted(set(prompt) - _SA3_PROMPT)
    if unknown:
        refuse(f"the prompt conditioner options {unknown} are not mapped")
    try:
        sa3_text_subfolder(cfg)
    except CheckpointError:
        refuse(f"the prompt conditioner's subfolder {prompt.get('subfolder')!r} is not a folder inside a repository")
    if prompt.get("project_out") or prompt.get("padding_mode", "zero") != "learned":
        refuse("a prompt conditioner with an output projection or without a learned padding embedding is not mapped")
    seconds = conds["seconds_total"].get("config") or {}
    if seconds.get("fourier_features_type", "learned") != "expo" or set(seconds) - {
            "min_val", "max_val", "fourier_features_type"}:
        refuse("the seconds_total conditioner's options are not mapped")


def sa3_text_repo(cfg: dict) -> str:
    """The hub repository (or folder) the T5Gemma conditioner loads its tokenizer, config and frozen weights from
    (T5GemmaConditioner: ``model_path or repo_id or model_name``), inside it ``sa3_text_subfolder``'s folder."""
    prompt = _conditioners(cfg)["prompt"]
    return prompt.get("model_path") or prompt.get("repo_id") or prompt.get("model_name") or SA3_T5GEMMA


def sa3_text_subfolder(cfg: dict) -> str | None:
    """The folder inside ``sa3_text_repo`` that holds the T5Gemma (the conditioner's ``subfolder``: Stability's
    releases name their own repository and the ``t5gemma-b-b-ul2`` folder published beside the checkpoint), or
    None (the repository's root)."""
    sub = _conditioners(cfg)["prompt"].get("subfolder")
    if sub is None or sub == "":
        return None
    if not isinstance(sub, str) or sub.startswith("/") or ".." in Path(sub).parts or "\\" in sub:
        raise CheckpointError(f"model_config.json's prompt conditioner subfolder {sub!r} is not a folder inside "
                              "a repository")
    return sub.strip("/")


def _reorder_qkv(value):
    """Self-attention ``to_qkv`` rows [q | k | v | q2 | k2] → diffusers' [q | q2 | k | k2 | v]."""
    import torch

    q, k, v, q2, k2 = value.chunk(5, dim=0)
    return torch.cat([q, q2, k, k2, v], dim=0)


_SA3_DIT_TOP = {"to_timestep_embed.0.weight", "to_timestep_embed.0.bias", "to_timestep_embed.2.weight",
                "to_timestep_embed.2.bias", "to_cond_embed.0.weight", "to_cond_embed.2.weight",
                "to_global_embed.0.weight", "to_global_embed.2.weight", "preprocess_conv.weight",
                "postprocess_conv.weight"}
_SA3_TRANSFORMER_TOP = {"project_in.weight": "proj_in.weight", "project_out.weight": "proj_out.weight",
                        "memory_tokens": "memory_tokens", "rotary_pos_emb.inv_freq": "rotary_pos_emb.inv_freq",
                        "global_cond_embedder.0.weight": "global_cond_embedder.0.weight",
                        "global_cond_embedder.0.bias": "global_cond_embedder.0.bias",
                        "global_cond_embedder.2.weight": "global_cond_embedder.2.weight",
                        "global_cond_embedder.2.bias": "global_cond_embedder.2.bias"}
# a DiT block's tensors: diffusers' StableAudio3DiTBlock keeps these names, except the SwiGLU feed-forward's
_SA3_BLOCK = re.compile(r"^(pre_norm|cross_attend_norm|ff_norm)\.gamma$|^self_attn\.(to_qkv|to_out)\.weight$|"
                        r"^(self_attn|cross_attn)\.(q_norm|k_norm)\.gamma$|^cross_attn\.(to_q|to_kv|to_out)\.weight$|"
                        r"^to_scale_shift_gate$|^to_local_embed\.[02]\.(weight|bias)$|^ff\.ff\.(0\.proj|2)\.(weight|bias)$")
_FF = (("ff.ff.0.proj.", "ff.proj_in."), ("ff.ff.2.", "ff.proj_out."))


def _ff_rename(name: str) -> str:
    for old, new in _FF:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def sa3_dit_state(sd: dict) -> dict:
    """Stability-AI/stable-audio-3 ``DiffusionTransformer`` keys (without ``model.model.``) →
    ``StableAudio3DiTModel``'s (without the padding embedding, which the conditioner holds)."""
    embed = sd["transformer.project_in.weight"].shape[0] if "transformer.project_in.weight" in sd else None
    out, left = {}, []
    for key, value in sd.items():
        if key in _SA3_DIT_TOP:
            out[key] = value
            continue
        if key.startswith("transformer.") and key[len("transformer."):] in _SA3_TRANSFORMER_TOP:
            out[_SA3_TRANSFORMER_TOP[key[len("transformer."):]]] = value
            continue
        m = re.match(r"^transformer\.layers\.(\d+)\.(.+)$", key)
        if m is None or not _SA3_BLOCK.match(m.group(2)):
            left.append(key)
            continue
        i, rest = m.groups()
        if rest == "self_attn.to_qkv.weight":
            if value.shape[0] != 5 * (embed or 0):
                raise CheckpointError(f"the DiT's self-attention {key} is {tuple(value.shape)}: not the differential "
                                      "attention (5 × the width) diffusers' StableAudio3DiTModel holds")
            value = _reorder_qkv(value)
        out[f"transformer_blocks.{i}.{_ff_rename(rest)}"] = value
    if left:
        raise CheckpointError(f"DiT tensors soundry does not map: {sorted(left)[:5]}")
    return out


_TRB_NORM = {"pre_norm": "norm_attn", "ff_norm": "norm_ff"}
_TRB_LOCAL = re.compile(r"^mapping\.(weight_g|weight_v|bias)$|^new_tokens$|^transformers\.(\d+)\.(.+)$")
_TRB_INNER = re.compile(r"^(pre_norm|ff_norm)\.(alpha|gamma|beta)$|^self_attn\.(to_qkv|to_out)\.weight$|"
                        r"^self_attn\.(q_norm|k_norm)\.(alpha|gamma|beta)$|^ff\.ff\.(0\.proj|2)\.(weight|bias)$")


def _trb(local: str, value, key: str):
    """One TransformerResamplingBlock tensor (its name inside the block) → AutoencoderSAME's name and value."""
    m = _TRB_LOCAL.match(local)
    if m is None:
        return None
    if m.group(2) is None:
        return local, value
    j, rest = m.group(2), m.group(3)
    if not _TRB_INNER.match(rest):
        return None
    head = rest.split(".", 1)[0]
    if head in _TRB_NORM:
        rest = _TRB_NORM[head] + rest[len(head):]
    elif rest.startswith("self_attn."):
        rest = "attn." + rest[len("self_attn."):]
        if rest == "attn.to_qkv.weight":
            if value.shape[0] != 5 * value.shape[1]:
                raise CheckpointError(f"the autoencoder's self-attention {key} is {tuple(value.shape)}: not the "
                                      "differential attention AutoencoderSAME holds")
            value = _reorder_qkv(value)
    else:
        rest = _ff_rename(rest)
    return f"transformers.{j}.{rest}", value


def same_state(sd: dict, depth: int) -> dict:
    """``SAMEEncoder`` / ``SAMEDecoder`` / ``SoftNormBottleneck`` keys (``encoder.*``, ``decoder.*``,
    ``bottleneck.*``, without ``pretransform.model.``) → ``AutoencoderSAME``'s, for ``depth`` resampling blocks.
    The encoder's Linear is ``layers[depth + 1]`` (after the blocks and a Transpose), the decoder's ``layers[1]``;
    the decoder's blocks are ``layers[3:]``, in the same order as diffusers' ``decoder.blocks``."""
    bottleneck = {"bottleneck.scaling_factor": "bottleneck.scale", "bottleneck.bias": "bottleneck.bias",
                  "bottleneck.running_std": "bottleneck.running_std"}
    out, left = {}, []
    for key, value in sd.items():
        if key in bottleneck:
            out[bottleneck[key]] = value
            continue
        if key == "bottleneck.noise_scaling_factor" and value.numel() == 0:  # noise_augment_dim 0: empty, unused
            continue
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            left.append(key)
            continue
        part, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        linear = depth + 1 if part == "encoder" else 1
        first = 0 if part == "encoder" else 3
        if idx == linear and rest in ("weight", "bias"):
            out[f"{part}.proj.{rest}"] = value
            continue
        placed = _trb(rest, value, key) if first <= idx < first + depth else None
        if placed is None:
            left.append(key)
            continue
        out[f"{part}.blocks.{idx - first}.{placed[0]}"] = placed[1]
    if left:
        raise CheckpointError(f"autoencoder tensors soundry does not map: {sorted(left)[:5]}")
    return out


def split_sa3_checkpoint(sd: dict, cfg: dict) -> tuple[dict, dict, dict, dict]:
    """(DiT, autoencoder, duration embedder, text encoder) state dicts in diffusers' names from a Stable Audio 3
    ``model.safetensors``; the text encoder's is empty when the checkpoint holds no T5Gemma (it was frozen)."""
    known = ("model.model.", "pretransform.model.", "conditioner.conditioners.")
    stray = sorted(k for k in sd if not k.startswith(known))
    if stray:
        raise CheckpointError(f"tensors outside the DiT, autoencoder and conditioners: {stray[:5]}")
    depth = len(cfg["model"]["pretransform"]["config"]["encoder"]["config"]["c_mults"])
    dit = sa3_dit_state(_split(sd, "model.model."))
    vae = same_state(_split(sd, "pretransform.model."), depth)
    conds = _split(sd, "conditioner.conditioners.")
    duration, text, left = {}, {}, []
    for key, value in conds.items():
        if key in ("seconds_total.embedder.embedding.1.weight", "seconds_total.embedder.embedding.1.bias"):
            duration["linear." + key.rsplit(".", 1)[1]] = value
        elif key == "prompt.padding_embedding":
            dit["prompt_padding_embedding"] = value
        elif key.startswith("prompt.model."):
            text[key[len("prompt.model."):]] = value
        else:
            left.append(key)
    if left:
        raise CheckpointError(f"conditioner tensors soundry does not map: {sorted(left)[:5]}")
    if "linear.weight" in duration:
        import math

        import torch

        half = duration["linear.weight"].shape[1] // 2  # ExpoFourierFeatures(dim, 0.5, 10000): no weights
        ramp = torch.linspace(0.0, 1.0, half)
        duration["freqs"] = torch.exp(ramp * (math.log(10000.0) - math.log(0.5)) + math.log(0.5))
    return dit, vae, duration, text


def sa3_dit_config(cfg: dict, dit: dict) -> dict:
    """``StableAudio3DiTModel``'s arguments: sizes from the tensors, the heads from the config (checked)."""
    options = cfg["model"]["diffusion"]["config"]
    try:
        embed, io = dit["proj_in.weight"].shape[0], dit["preprocess_conv.weight"].shape[0]
        layers = len({k.split(".")[1] for k in dit if k.startswith("transformer_blocks.")})
        head_dim = dit["transformer_blocks.0.self_attn.q_norm.gamma"].shape[0]
        config = {"io_channels": io, "patch_size": 1, "embed_dim": embed, "depth": layers,
                  "num_heads": int(options.get("num_heads", embed // head_dim)),
                  "cond_token_dim": dit["to_cond_embed.0.weight"].shape[1],
                  "global_cond_dim": dit["to_global_embed.0.weight"].shape[1],
                  "local_add_cond_dim": dit["transformer_blocks.0.to_local_embed.0.weight"].shape[1],
                  "timestep_features_dim": dit["to_timestep_embed.0.weight"].shape[1],
                  "ff_mult": dit["transformer_blocks.0.ff.proj_in.weight"].shape[0] / (2 * embed),
                  "num_memory_tokens": dit["memory_tokens"].shape[0] if "memory_tokens" in dit else 0,
                  "use_differential_attention": True}
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint's DiT has no {exc.args[0]} (after mapping): not Stable Audio 3's "
                              "DiT") from exc
    if config["num_heads"] * head_dim != embed:
        raise CheckpointError(f"model_config.json's num_heads {config['num_heads']} does not fit the DiT's width "
                              f"{embed} with {head_dim}-wide heads")
    return config


def same_config(cfg: dict, vae: dict) -> dict:
    """``AutoencoderSAME``'s arguments: what the weights cannot show (strides, window, sinusoidal blocks, the
    patch) from the config, as diffusers' script reads them; the rest checked against the tensors."""
    import math

    pre = cfg["model"]["pretransform"]["config"]
    enc, dec = pre["encoder"]["config"], pre["decoder"]["config"]
    strides = list(enc["strides"])
    window = enc.get("sliding_window") or [1]
    ratio = int(pre["downsampling_ratio"])
    if ratio % math.prod(strides):
        raise CheckpointError(f"model_config.json's downsampling_ratio {ratio} is not a multiple of the strides "
                              f"{strides}")
    width = vae["encoder.blocks.0.transformers.0.norm_attn.gamma"].shape[0]
    config = {"audio_channels": int(pre.get("io_channels", 2)), "patch_size": ratio // math.prod(strides),
              "encoder_channels": int(enc["channels"]), "encoder_c_mults": list(enc["c_mults"]),
              "encoder_strides": strides, "encoder_transformer_depths": list(enc["transformer_depths"]),
              "latent_dim": vae["encoder.proj.weight"].shape[0], "use_differential_attention": True,
              "dim_heads": vae["encoder.blocks.0.transformers.0.attn.q_norm.gamma"].shape[0],
              "ff_mult": vae["encoder.blocks.0.transformers.0.ff.proj_in.weight"].shape[0] // (2 * width),
              "sliding_window": int(window[0] if isinstance(window, list) else window),
              "encoder_sinusoidal_blocks": list(enc.get("sinusoidal_blocks", [0] * len(strides))),
              "decoder_sinusoidal_blocks": list(dec.get("sinusoidal_blocks", [0] * len(strides))),
              "sampling_rate": int(cfg["sample_rate"])}
    patch = ((pre.get("pretransform") or {}).get("config") or {}).get("patch_size")
    if patch is not None and int(patch) != config["patch_size"]:
        raise CheckpointError(f"model_config.json's patch_size {patch} does not match downsampling_ratio / the "
                              f"strides ({config['patch_size']})")
    return config


def _check_sa3_text_parts(text_encoder: Path, tokenizer: Path) -> None:
    if not (text_encoder / "config.json").is_file():
        raise CheckpointError(f"the T5Gemma folder {text_encoder} has no config.json")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(f"the tokenizer folder {tokenizer} has neither tokenizer.json nor tokenizer.model")


def convert_sa3_dir(src: Path, dst: Path, cfg: dict, sd: dict, text_encoder: Path, tokenizer: Path) -> None:
    """Write the Stable Audio 3 checkpoint ``sd`` (Stability's names) and the T5Gemma parts as a
    ``StableAudio3Pipeline`` folder at ``dst`` (a fresh temporary folder)."""
    from diffusers import (
        AutoencoderSAME,
        FlowMatchEulerDiscreteScheduler,
        StableAudio3DiTModel,
        StableAudio3DurationEmbedder,
    )

    _check_sa3_text_parts(text_encoder, tokenizer)
    dit_sd, vae_sd, dur_sd, text_sd = split_sa3_checkpoint(sd, cfg)
    if "prompt_padding_embedding" not in dit_sd:
        raise CheckpointError("the checkpoint has no conditioner.conditioners.prompt.padding_embedding (the learned "
                              "padding embedding its model_config.json names)")
    if not any(text_encoder.glob("*.safetensors")) and not text_sd:
        raise CheckpointError(f"neither the checkpoint nor {text_encoder} holds T5Gemma weights (safetensors)")
    dtype = next(iter(dit_sd.values())).dtype

    build = functools.partial(_build, dtype=dtype, root=dst)

    build(StableAudio3DiTModel, sa3_dit_config(cfg, dit_sd), dit_sd, "transformer")
    build(AutoencoderSAME, same_config(cfg, vae_sd), vae_sd, "vae")
    seconds = _conditioners(cfg)["seconds_total"]
    build(StableAudio3DurationEmbedder, {"output_dim": dur_sd["linear.weight"].shape[0],
                                         "fourier_dim": dur_sd["linear.weight"].shape[1],
                                         "min_val": float(seconds.get("min_val", 0)),
                                         "max_val": float(seconds.get("max_val", 1)), "min_freq": 0.5,
                                         "max_freq": 10000.0}, dur_sd, "duration_embedder")
    # the distilled release (rf_denoiser) re-noises at every step, the base one (rectified_flow) does not
    objective = cfg["model"]["diffusion"].get("diffusion_objective")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0,
                                    stochastic_sampling=objective == "rf_denoiser").save_pretrained(
        str(dst / "scheduler"))
    _write_t5gemma(text_encoder, text_sd, dst / "text_encoder")
    _copy_files(tokenizer, dst / "tokenizer", lambda n: n in _GEMMA_TOKENIZER_FILES)
    tok_cfg_path = dst / "tokenizer" / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    tok_cfg["model_max_length"] = int(_conditioners(cfg)["prompt"].get("max_length", 128))
    tok_class = tok_cfg.get("tokenizer_class") or "GemmaTokenizer"
    tok_class = tok_class if tok_class in ("GemmaTokenizer", "GemmaTokenizerFast") else "GemmaTokenizer"
    tok_cfg["tokenizer_class"] = tok_class
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    index = {"_class_name": "StableAudio3Pipeline", "_diffusers_version": _diffusers_version(),
             "duration_embedder": ["stable_audio_3", "StableAudio3DurationEmbedder"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "T5GemmaEncoderModel"], "tokenizer": ["transformers", tok_class],
             "transformer": ["diffusers", "StableAudio3DiTModel"], "vae": ["diffusers", "AutoencoderSAME"]}
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))


_GEMMA_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                          "added_tokens.json"}


def _write_t5gemma(src: Path, state: dict, dst: Path) -> None:
    """The T5Gemma encoder as ``T5GemmaEncoderModel`` (safetensors): the checkpoint's own weights when it holds
    them (a trained encoder), else ``src``'s (a whole T5Gemma, as google/t5gemma-b-b-ul2 is published, keeps its
    encoder), with ``src``'s config."""
    from transformers import AutoConfig, T5GemmaEncoderModel

    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    if getattr(config, "model_type", None) != "t5gemma":
        raise CheckpointError(f"{src}/config.json is a {getattr(config, 'model_type', None)!r} model, not T5Gemma")
    config.is_encoder_decoder = False
    config.architectures = ["T5GemmaEncoderModel"]
    if state:
        model = T5GemmaEncoderModel(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"the checkpoint's T5Gemma (conditioner.conditioners.prompt.model.*) does not fit "
                                  f"{src}/config.json ({str(exc).splitlines()[0]})") from exc
    else:
        model = T5GemmaEncoderModel.from_pretrained(str(src), config=config, local_files_only=True,
                                                    use_safetensors=True)
    model.save_pretrained(str(dst), safe_serialization=True)
