"""Build an ``AudioModel`` from a release directory or a registry name."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from soundry.models import catalog
from soundry.models.audiocraft.conditioners.text import DEFAULT_MAX_TOKENS, TextConditioner
from soundry.models.audiocraft.formats.release import LMConfig, load_package, parse_cfg
from soundry.models.audiocraft.formats.transformers import is_transformers_dir, load_transformers_model
from soundry.models.audiocraft.lm.precision import DTYPES, apply_precision, check_precision, resolve_precision
from soundry.models.audiocraft.lm.transformer import TransformerLM, normalize_state_dict
from soundry.models.audiocraft.model import AudioModel
from soundry.models.errors import CheckpointError, ModelNotAvailable
from soundry.models.sources.paths import resolve_component, resolve_model_dir

log = logging.getLogger(__name__)

_CONDITIONER_PREFIX = "condition_provider.conditioners.description."


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_LOAD_LOCK = threading.Lock()


def load_model(name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None,
               quantize: str | None = None, precision: str | None = None,
               max_text_tokens: int | None = None, packed: bool = True, fused_heads: bool = False) -> AudioModel:
    """Load a model by registry name (``audiogen``, ``musicgen-small``, ...) or release directory.

    ``precision`` (``auto | fp32 | bf16 | fp16 | int8``, see ``soundry.models.audiocraft.lm.precision``) sets how
    the LM runs; ``auto`` (the default) is bfloat16 on CUDA and float32 on the CPU. The older
    ``dtype`` and ``quantize="int8"`` arguments still work when ``precision`` is not given.
    A precision the device cannot run raises ``PrecisionError`` here, at load.
    Loads are serialised within a process: transformers' ``from_pretrained`` switches process-wide
    state (the default device for meta-initialisation), so two loads at once can corrupt each other.
    ``max_text_tokens`` bounds the tokens the text encoder sees per prompt (longer ones are truncated).
    ``packed`` (CPU, fp32/bf16) puts the LM's linear weights in oneDNN's layout
    (``soundry.models.audiocraft.lm.packed``).
    ``fused_heads`` computes the K output heads as one matmul (``TransformerLM.fuse_heads_``; release
    checkpoints only).
    """
    with _LOAD_LOCK:
        return _load_model(name_or_path, device, dtype, quantize, precision, max_text_tokens or DEFAULT_MAX_TOKENS,
                           packed, fused_heads)


def _legacy_precision(dtype: torch.dtype | None, quantize: str | None) -> str | None:
    if quantize:
        return quantize
    return None if dtype is None else {v: k for k, v in DTYPES.items()}[dtype]


def _load_model(name_or_path: str, device: str | None, dtype: torch.dtype | None,
                quantize: str | None, precision: str | None, max_text_tokens: int, packed: bool,
                fused_heads: bool = False) -> AudioModel:
    dev = pick_device(device)
    precision = resolve_precision(precision or _legacy_precision(dtype, quantize), dev)
    release_dir = resolve_model_dir(name_or_path)
    spec = catalog.active().find(name_or_path)
    if is_transformers_dir(release_dir) or (spec is not None and spec.adapter):
        return _load_transformers(name_or_path, release_dir, spec, dev, precision, max_text_tokens, packed)
    lm_path = release_dir / "state_dict.bin"
    pkg = load_package(lm_path)
    cfg_dict = parse_cfg(pkg, lm_path)
    cfg = LMConfig.from_cfg(cfg_dict)
    state = pkg.get("best_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{lm_path} has no 'best_state' dict")
    family = _family(name_or_path, cfg)

    # Built on the meta device and given the checkpoint's tensors (cast once, straight to the load
    # dtype): no second full-size copy of the weights, which matters for 1.5B-parameter models.
    with torch.device("meta"):
        lm = TransformerLM(cfg)
    load_dtype = DTYPES.get(precision, torch.float32)  # int8 quantises from float32
    weights = {k: v.to(load_dtype) for k, v in normalize_state_dict(state).items()}
    missing, unexpected = lm.load_state_dict(weights, strict=False, assign=True)
    del weights
    if missing or unexpected:
        raise CheckpointError(f"{lm_path}: weights do not match xp.cfg (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    lm = apply_precision(lm.eval(), precision, dev, packed=packed, fused_heads=fused_heads)
    check_precision(lm, precision, dev)

    t5_source = resolve_component(release_dir, "t5", cfg.t5_name)
    proj_w = state[_CONDITIONER_PREFIX + "output_proj.weight"]
    conditioner = TextConditioner(t5_source, output_dim=proj_w.shape[0], t5_dim=proj_w.shape[1],
                                  max_tokens=max_text_tokens)
    conditioner.output_proj.load_state_dict({
        "weight": proj_w.float(), "bias": state[_CONDITIONER_PREFIX + "output_proj.bias"].float()})
    conditioner = conditioner.eval().to(dev)

    from soundry.models.audiocraft.codecs.encodec import load_codec, wrap_codec

    codec = load_codec(release_dir, lambda hub_name: Path(resolve_component(release_dir, "encodec", hub_name)))
    codec = wrap_codec(codec, cfg_dict)
    if codec.n_q != cfg.n_q:
        raise CheckpointError(f"{lm_path}: xp.cfg transformer_lm.n_q={cfg.n_q} does not match the codec's "
                              f"{codec.n_q} codebooks (channels={codec.channels})")
    codec = codec.eval().to(dev)
    name = _display_name(name_or_path)
    log.info("loaded %s from %s on %s (%s)", name, release_dir, dev, precision)
    melody = None
    if "self_wav" in cfg.prepend:  # MusicGen-melody: the chroma conditioner (demucs loads on first use)
        from soundry.models.audiocraft.conditioners.melody import from_release

        melody = from_release(cfg_dict, state, release_dir, dev)
    model = AudioModel(name, family, cfg, lm, conditioner, codec, source=release_dir, melody=melody)
    model.precision = precision
    return model


def _load_transformers(name_or_path: str, model_dir: Path, spec, dev: torch.device, precision: str,
                       max_text_tokens: int, packed: bool) -> AudioModel:
    """A transformers-format checkpoint (``formats.transformers``), with its LoRA adapter if registered."""
    adapter_dir = None
    if spec is not None and spec.adapter:
        if not is_transformers_dir(model_dir):
            raise CheckpointError(f"{spec.name}: a LoRA adapter is merged into a transformers-format base; "
                                  f"{model_dir} is in audiocraft's release format")
        from soundry.models.sources.hub import fetch

        adapter_dir = fetch(spec.adapter, download=True, kind="adapter")
    family = spec.family if spec is not None else "musicgen"
    model = load_transformers_model(model_dir, _display_name(name_or_path), family, dev, precision, max_text_tokens,
                                    packed, adapter_dir)
    model.format, model.adapter = "transformers", adapter_dir
    return model


def _family(name_or_path: str, cfg: LMConfig) -> str:
    spec = catalog.active().find(name_or_path)
    if spec is not None:
        return spec.family
    return "audiogen" if cfg.sample_rate == 16000 else "musicgen"


def _display_name(name_or_path: str) -> str:
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


__all__ = ["load_model", "ModelNotAvailable", "pick_device"]
