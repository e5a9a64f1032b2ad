"""The audiocraft release format as a model: ``state_dict.bin`` (the LM and the text projection, its xp.cfg) and
``compression_state_dict.bin`` (the codec), with ``t5/``, ``encodec/`` and ``demucs/`` beside them when a folder
carries its components (``checkpoint.resolve_component``)."""

from __future__ import annotations

from pathlib import Path

import torch

from soundry.models.audiocraft.checkpoint import LMConfig, load_package, parse_cfg, resolve_component
from soundry.models.audiocraft.conditioners.text import TextConditioner
from soundry.models.audiocraft.lm.precision import DTYPES, apply_precision, check_precision
from soundry.models.audiocraft.lm.transformer import TransformerLM, normalize_state_dict
from soundry.models.audiocraft.model import AudioModel
from soundry.models.errors import CheckpointError

_CONDITIONER_PREFIX = "condition_provider.conditioners.description."


def load_release_model(release_dir: Path, name: str, family: str | None, dev: torch.device, precision: str,
                       max_text_tokens: int, packed: bool | str, fused_heads: bool = False) -> AudioModel:
    """The model of a release folder, on ``dev`` in ``precision`` (``family``: the catalog's, else from the
    sample rate)."""
    lm_path = release_dir / "state_dict.bin"
    pkg = load_package(lm_path)
    cfg_dict = parse_cfg(pkg, lm_path)
    cfg = LMConfig.from_cfg(cfg_dict)
    state = pkg.get("best_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{lm_path} has no 'best_state' dict")
    family = family or ("audiogen" if cfg.sample_rate == 16000 else "musicgen")

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
    melody = None
    if "self_wav" in cfg.prepend:  # MusicGen-melody: the chroma conditioner (demucs loads on first use)
        from soundry.models.audiocraft.conditioners.melody import from_release

        melody = from_release(cfg_dict, state, release_dir, dev)
    model = AudioModel(name, family, cfg, lm, conditioner, codec, source=release_dir, melody=melody)
    model.precision = precision
    return model
