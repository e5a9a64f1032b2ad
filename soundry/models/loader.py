"""Build an ``AudioModel`` from a release directory or a registry name."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from soundry.models.audio_model import AudioModel
from soundry.models.checkpoint import CheckpointError, LMConfig, load_package, parse_cfg
from soundry.models.conditioner import DEFAULT_MAX_TOKENS, TextConditioner
from soundry.models.lm import TransformerLM, normalize_state_dict
from soundry.models.registry import ALIASES, SPECS, ModelNotAvailable, resolve_component, resolve_model_dir

log = logging.getLogger(__name__)

_CONDITIONER_PREFIX = "condition_provider.conditioners.description."


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_LOAD_LOCK = threading.Lock()


def load_model(name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None,
               quantize: str | None = None, max_text_tokens: int | None = None) -> AudioModel:
    """Load a model by registry name (``audiogen``, ``musicgen-small``, ...) or release directory.

    On CUDA the LM runs in bfloat16 unless ``dtype`` says otherwise; on the CPU in float32.
    ``quantize="int8"`` applies dynamic int8 quantisation to the LM's linear layers (CPU only).
    Loads are serialised within a process: transformers' ``from_pretrained`` switches process-wide
    state (the default device for meta-initialisation), so two loads at once can corrupt each other.
    ``max_text_tokens`` bounds the tokens the text encoder sees per prompt (longer ones are truncated).
    """
    with _LOAD_LOCK:
        return _load_model(name_or_path, device, dtype, quantize, max_text_tokens or DEFAULT_MAX_TOKENS)


def _load_model(name_or_path: str, device: str | None, dtype: torch.dtype | None,
                quantize: str | None, max_text_tokens: int) -> AudioModel:
    release_dir = resolve_model_dir(name_or_path)
    dev = pick_device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    lm_path = release_dir / "state_dict.bin"
    pkg = load_package(lm_path)
    cfg_dict = parse_cfg(pkg, lm_path)
    cfg = LMConfig.from_cfg(cfg_dict)
    state = pkg.get("best_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{lm_path} has no 'best_state' dict")
    family = _family(name_or_path, cfg)

    lm = TransformerLM(cfg)
    missing, unexpected = lm.load_state_dict({k: v.float() for k, v in normalize_state_dict(state).items()},
                                             strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{lm_path}: weights do not match xp.cfg (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    lm = lm.eval().to(dev, dtype)
    if quantize:
        from soundry.engine.quantize import quantize_lm

        lm = quantize_lm(lm, quantize)

    t5_source = resolve_component(release_dir, "t5", cfg.t5_name)
    proj_w = state[_CONDITIONER_PREFIX + "output_proj.weight"]
    conditioner = TextConditioner(t5_source, output_dim=proj_w.shape[0], t5_dim=proj_w.shape[1],
                                  max_tokens=max_text_tokens)
    conditioner.output_proj.load_state_dict({
        "weight": proj_w.float(), "bias": state[_CONDITIONER_PREFIX + "output_proj.bias"].float()})
    conditioner = conditioner.eval().to(dev)

    from soundry.models.codec import load_codec, wrap_codec

    codec = load_codec(release_dir, lambda hub_name: Path(resolve_component(release_dir, "encodec", hub_name)))
    codec = wrap_codec(codec, cfg_dict)
    if codec.n_q != cfg.n_q:
        raise CheckpointError(f"{lm_path}: xp.cfg transformer_lm.n_q={cfg.n_q} does not match the codec's "
                              f"{codec.n_q} codebooks (channels={codec.channels})")
    codec = codec.eval().to(dev)
    name = _display_name(name_or_path)
    log.info("loaded %s from %s on %s (%s)", name, release_dir, dev, dtype)
    return AudioModel(name, family, cfg, lm, conditioner, codec, source=release_dir)


def _family(name_or_path: str, cfg: LMConfig) -> str:
    key = ALIASES.get(name_or_path.lower(), name_or_path.lower())
    if key in SPECS:
        return SPECS[key].family
    return "audiogen" if cfg.sample_rate == 16000 else "musicgen"


def _display_name(name_or_path: str) -> str:
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


__all__ = ["load_model", "ModelNotAvailable", "pick_device"]
