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

# the model_config.json options soundry maps (anything else in these places is refused)
_DIT_OPTIONS = {"io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim",
                "project_cond_tokens", "project_global_cond", "transformer_type", "patch_size", "global_cond_type",
                "timestep_cond_type", "diffusion_objective", "attn_kwargs", "ff_kwargs"}
_DIT_FIXED = {"transformer_type": "continuous_transformer", "patch_size": 1, "global_cond_type": "prepend",
              "timestep_cond_type": "global", "diffusion_objective": "v"}
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
    """Raise CheckpointError (one sentence) unless ``cfg`` is Stable Audio Open 1.0's or Stable Audio 3's
    architecture (a T5Gemma prompt conditioner: check_sa3_config)."""
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
    model = cfg.get("model") or {}
    diffusion = model.get("diffusion") or {}
    if diffusion.get("type") != "dit":
        refuse("the diffusion network is not mapped")
    options = diffusion.get("config") or {}
    _check_dit_options(options, _DIT_OPTIONS, _DIT_FIXED, refuse)
    if options.get("attn_kwargs") or options.get("ff_kwargs"):
        refuse("the DiT's attention / feed-forward options are not mapped")
    pre = model.get("pretransform") or {}
    pcfg = pre.get("config") or {}
    if (pre.get("type") != "autoencoder" or (pcfg.get("encoder") or {}).get("type") != "oobleck"
            or (pcfg.get("decoder") or {}).get("type") != "oobleck"
            or (pcfg.get("bottleneck") or {}).get("type") != "vae"):
        refuse("the autoencoder is not mapped")
    for part in ("encoder", "decoder"):
        pc = pcfg[part].get("config") or {}
        if not pc.get("use_snake") or pc.get("antialias_activation") or pc.get("use_nearest_upsample"):
            refuse(f"the {part}'s activation or upsampling option is not mapped")
        if part == "decoder" and pc.get("final_tanh", True):
            refuse("a final tanh in the decoder is not mapped")
    conds = {c.get("id"): c for c in (model.get("conditioning") or {}).get("configs") or [] if isinstance(c, dict)}
    if set(conds) != {"prompt", "seconds_start", "seconds_total"} or conds["prompt"].get("type") != "t5" or any(
            conds[k].get("type") not in ("number", "int") for k in ("seconds_start", "seconds_total")):
        refuse("the conditioners are not mapped")
    if diffusion.get("cross_attention_cond_ids", ["prompt", "seconds_start", "seconds_total"]) != [
            "prompt", "seconds_start", "seconds_total"] or diffusion.get(
            "global_cond_ids", ["seconds_start", "seconds_total"]) != ["seconds_start", "seconds_total"]:
        refuse("the conditioning order is not mapped")


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
    depth = len(cfg["model"]["pretransform"]["config"]["encoder"]["config"]["strides"])
    return (dit_state(_split(sd, "model.model.")), oobleck_state(_split(sd, "pretransform.model."), depth),
            projection_state(_split(sd, "conditioner.conditioners.")))


# -- the diffusers configs ----------------------------------------------------------------------------------------
def dit_config(cfg: dict, dit: dict) -> dict:
    """``StableAudioDiTModel``'s arguments: sizes from the tensors, heads and the window from the config."""
    options = cfg["model"]["diffusion"]["config"]
    pre = cfg["model"]["pretransform"]["config"]
    heads = int(options["num_heads"])
    embed = dit["proj_in.weight"].shape[0]
    head_dim = embed // heads
    layers = len({k.split(".")[1] for k in dit if k.startswith("transformer_blocks.")})
    return {"sample_size": int(cfg["sample_size"]) // int(pre["downsampling_ratio"]),
            "in_channels": dit["preprocess_conv.weight"].shape[0], "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": heads,
            "num_key_value_attention_heads": dit["transformer_blocks.0.attn2.to_k.weight"].shape[0] // head_dim,
            "out_channels": dit["postprocess_conv.weight"].shape[0],
            "cross_attention_dim": dit["cross_attention_proj.0.weight"].shape[0],
            "time_proj_dim": 2 * dit["time_proj.weight"].shape[0],
            "global_states_input_dim": dit["global_proj.0.weight"].shape[1],
            "cross_attention_input_dim": dit["cross_attention_proj.0.weight"].shape[1]}


def vae_config(cfg: dict) -> dict:
    pre = cfg["model"]["pretransform"]["config"]
    enc, dec = pre["encoder"]["config"], pre["decoder"]["config"]
    if (enc.get("strides") != dec.get("strides") or enc.get("c_mults") != dec.get("c_mults")
            or enc.get("channels") != dec.get("channels")):
        raise CheckpointError("the encoder and decoder of model_config.json differ in strides, c_mults or channels; "
                              "AutoencoderOobleck has one of each")
    return {"encoder_hidden_size": enc["channels"], "downsampling_ratios": list(enc["strides"]),
            "channel_multiples": list(enc["c_mults"]), "decoder_channels": dec["channels"],
            "decoder_input_channels": dec["latent_dim"], "audio_channels": pre.get("io_channels", 2),
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
    conds = _conditioners(cfg)
    te_cfg = json.loads((text_encoder / "config.json").read_text())
    cond_dim = int(cfg["model"]["conditioning"]["cond_dim"])
    t5_dim = int(te_cfg.get("d_model", 0))
    if "text_projection.weight" not in proj_sd and t5_dim != cond_dim:
        raise CheckpointError(f"the text encoder in {text_encoder} is {t5_dim} wide but the checkpoint's prompt "
                              f"conditioner has no projection to its {cond_dim}: not the T5 it was trained with")
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        _write_pipeline(work, cfg, dit_sd, vae_sd, proj_sd, conds, t5_dim, cond_dim, text_encoder, tokenizer,
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


def _write_pipeline(work: Path, cfg: dict, dit_sd: dict, vae_sd: dict, proj_sd: dict, conds: dict, t5_dim: int,
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
    start = conds["seconds_start"]
    build(StableAudioProjectionModel, {"text_encoder_dim": t5_dim, "conditioning_dim": cond_dim,
                                       "min_value": start.get("min_val", 0), "max_value": start.get("max_val", 1)},
          proj_sd, "projection_model")
    # the release's sampler settings (stable-audio-tools' defaults for this model, as diffusers' script sets them)
    CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500, solver_order=2, prediction_type="v_prediction",
                                      sigma_data=1.0, sigma_schedule="exponential").save_pretrained(
        str(work / "scheduler"))
    _copy_text_encoder(text_encoder, work / "text_encoder")
    _copy_files(tokenizer, work / "tokenizer", lambda n: n in _TOKENIZER_FILES)
    max_length = conds["prompt"].get("max_length")
    tok_cfg_path = work / "tokenizer" / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    if max_length:
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
# (``model_path`` / ``repo_id`` / ``model_name``, default ``google/t5gemma-b-b-ul2``). The facts of the mapping are
# diffusers' ``scripts/convert_stable_audio_3_to_diffusers.py``'s (the self-attention ``to_qkv`` reorder
# [q|k|v|q2|k2] → [q1|q2|k1|k2|v], the SAME norm / feed-forward renames, the bottleneck's ``scaling_factor`` →
# ``scale``, the padding embedding moved onto the DiT, the duration embedder's ``freqs`` computed); the rules below
# are soundry's, and unlike that script they place or refuse every tensor and option.
SA3_T5GEMMA = "google/t5gemma-b-b-ul2"
_SA3_DIT_FIXED = {"patch_size": 1, "transformer_type": "continuous_transformer", "global_cond_type": "adaLN",
                  "timestep_cond_type": "global", "timestep_features_type": "expo", "project_cond_tokens": True,
                  "project_global_cond": True, "rotary_pos_emb": True, "input_concat_dim": 0, "prepend_cond_dim": 0,
                  "cross_attn_rotary_pos_emb": False, "use_sinusoidal_emb": False, "use_abs_pos_emb": False,
                  "conformer": False, "causal": False, "final_cross_attn_ix": -1}
_SA3_DIT_OPTIONS = set(_SA3_DIT_FIXED) | {"io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim",
                                          "global_cond_dim", "timestep_features_dim", "num_memory_tokens",
                                          "local_add_cond_dim", "attn_kwargs", "ff_kwargs", "zero_init_branch_outputs"}
_SA3_ATTN = {"differential", "qk_norm", "qk_norm_eps"}
_SA3_FF = {"mult", "no_bias"}
_SA3_DIFFUSION = {"type", "config", "diffusion_objective", "cross_attention_cond_ids", "global_cond_ids",
                  "local_add_cond_ids", "distribution_shift_options", "sampling_distribution_shift_options",
                  "mask_padding_attention", "use_effective_length_for_schedule"}
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

    if cfg.get("model_type") != "diffusion_cond":
        refuse("the model type is not mapped")
    model = cfg.get("model") or {}
    diffusion = model.get("diffusion") or {}
    if diffusion.get("type") != "dit":
        refuse("the diffusion network is not mapped")
    unknown = sorted(set(diffusion) - _SA3_DIFFUSION)
    if unknown:
        refuse(f"the diffusion options {unknown} are not mapped")
    if diffusion.get("diffusion_objective", "v") not in _SA3_OBJECTIVES:
        refuse(f"the diffusion objective {diffusion.get('diffusion_objective', 'v')!r} is not mapped")
    if diffusion.get("cross_attention_cond_ids") != ["prompt"] or diffusion.get("global_cond_ids") != [
            "seconds_total"]:  # local_add_cond_ids (inpainting inputs): not text-to-audio's, the weights are kept
        refuse("the conditioning order is not mapped")
    options = diffusion.get("config") or {}
    _check_dit_options(options, _SA3_DIT_OPTIONS, _SA3_DIT_FIXED, refuse)
    for key, allowed in (("attn_kwargs", _SA3_ATTN), ("ff_kwargs", _SA3_FF)):
        extra = sorted(set(options.get(key) or {}) - allowed)
        if extra:
            refuse(f"the DiT's {key} {extra} are not mapped")
    if (options.get("ff_kwargs") or {}).get("no_bias"):
        refuse("a DiT feed-forward without bias is not mapped")
    pre = model.get("pretransform") or {}
    pcfg = pre.get("config") or {}
    if pre.get("type") != "autoencoder" or not all(isinstance(pcfg.get(p), dict) for p in ("encoder", "decoder")):
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
    if prompt.get("project_out") or prompt.get("padding_mode", "zero") != "learned":
        refuse("a prompt conditioner with an output projection or without a learned padding embedding is not mapped")
    seconds = conds["seconds_total"].get("config") or {}
    if seconds.get("fourier_features_type", "learned") != "expo" or set(seconds) - {
            "min_val", "max_val", "fourier_features_type"}:
        refuse("the seconds_total conditioner's options are not mapped")


def sa3_text_repo(cfg: dict) -> str:
    """The hub repository (or folder) the T5Gemma conditioner loads its tokenizer, config and frozen weights from."""
    prompt = _conditioners(cfg)["prompt"]
    return prompt.get("model_path") or prompt.get("repo_id") or prompt.get("model_name") or SA3_T5GEMMA


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
