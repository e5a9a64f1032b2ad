"""Reading audiocraft release checkpoints safely (``torch.load(weights_only=True)``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from soundry.models.errors import CheckpointError


def load_package(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load a release package without unpickling code (``mmap``: tensors stay on disk until read, for a look at
    its xp.cfg)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(pkg, dict):
        raise CheckpointError(f"checkpoint {path} is not a dict package")
    return pkg


def parse_cfg(pkg: dict[str, Any], path: Path) -> dict[str, Any]:
    raw = pkg.get("xp.cfg")
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no 'xp.cfg'")
    cfg = yaml.safe_load(raw) if isinstance(raw, str) else dict(raw)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path}: xp.cfg is not a mapping")
    return cfg


@dataclass(frozen=True)
class LMConfig:
    """What xp.cfg says about the transformer LM (the parts inference needs)."""

    dim: int
    num_heads: int
    num_layers: int
    hidden_scale: int
    n_q: int
    card: int
    delays: tuple[int, ...]
    norm_first: bool
    bias_ff: bool
    bias_attn: bool
    bias_proj: bool
    cross_attention: bool
    positional_embedding: str
    max_period: float
    positional_scale: float
    activation: str
    t5_name: str
    t5_dim_hint: int | None
    cfg_coef: float
    sample_rate: int
    segment_duration: float
    # Where transformers' MusicGen differs from audiocraft's (formats.transformers): "transformers" for
    # transformers-format checkpoints (its sinusoid, text padding masked in a batch), else "audiocraft".
    layout: str = "audiocraft"
    special_token: int | None = None  # the delay pattern's filler token; None: ``card`` (audiocraft's)
    # Conditions prepended to the LM's input ("self_wav": the melody's chroma, "description": the text), in
    # xp.cfg's fuser order; the LM reads them through self-attention (MusicGen-melody has no cross-attention).
    prepend: tuple[str, ...] = ()

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> LMConfig:
        lm = cfg.get("transformer_lm", {})
        pattern = cfg.get("codebooks_pattern", {})
        if pattern.get("modeling", "delay") != "delay":
            raise CheckpointError(f"codebooks pattern {pattern.get('modeling')!r} is not supported (only 'delay')")
        delays = tuple(pattern.get("delay", {}).get("delays") or range(lm["n_q"]))
        for key in ("flatten_first", "empty_initial"):
            if pattern.get("delay", {}).get(key, 0):
                raise CheckpointError(f"delay pattern with {key} != 0 is not supported")
        fuser = cfg.get("fuser") or {}
        cross = bool(fuser.get("cross")) or bool(lm.get("cross_attention", False))
        prepend = tuple(fuser.get("prepend") or ())
        for method in ("sum", "input_interpolate"):
            if fuser.get(method):
                raise CheckpointError(f"xp.cfg fuser.{method} ({', '.join(fuser[method])}) is not supported "
                                      f"(conditions are read by cross-attention or prepended)")
        conditioners = {k: v for k, v in (cfg.get("conditioners") or {}).items()
                        if isinstance(v, dict) and v.get("model")}
        for name in [*prepend, *(fuser.get("cross") or ())]:
            if name not in conditioners:
                raise CheckpointError(f"xp.cfg fuser names the condition {name!r}, which conditioners does not define")
        for name, spec in conditioners.items():
            if name == "self_wav" and spec.get("model") == "chroma_stem":
                if name not in prepend:
                    raise CheckpointError("xp.cfg conditioners.self_wav (chroma) is supported only prepended "
                                          "(fuser.prepend), as the melody releases fuse it")
            elif name != "description":
                raise CheckpointError(f"xp.cfg conditioners.{name} (model {spec.get('model')!r}) is not supported "
                                      f"(text and the melody's chroma only)")
        cond = cfg.get("conditioners", {}).get("description", {})
        if cond.get("model") != "t5":
            raise CheckpointError(f"text conditioner {cond.get('model')!r} is not supported (only t5)")
        for flag in ("qk_layer_norm", "qk_layer_norm_cross", "xpos"):
            if lm.get(flag):
                raise CheckpointError(f"transformer_lm.{flag} is not supported")
        if lm.get("layer_scale") is not None:
            raise CheckpointError("transformer_lm.layer_scale is not supported")
        if lm.get("kv_repeat", 1) != 1:
            raise CheckpointError("transformer_lm.kv_repeat != 1 is not supported")
        if lm.get("positional_embedding", "sin") != "sin":
            raise CheckpointError(f"positional embedding {lm.get('positional_embedding')!r} is not supported")
        return cls(
            dim=int(lm["dim"]), num_heads=int(lm["num_heads"]), num_layers=int(lm["num_layers"]),
            hidden_scale=int(lm.get("hidden_scale", 4)), n_q=int(lm["n_q"]), card=int(lm["card"]),
            delays=delays, norm_first=bool(lm.get("norm_first", False)),
            bias_ff=bool(lm.get("bias_ff", True)), bias_attn=bool(lm.get("bias_attn", True)),
            bias_proj=bool(lm.get("bias_proj", True)), cross_attention=cross,
            positional_embedding=lm.get("positional_embedding", "sin"),
            max_period=float(lm.get("max_period", 10000)),
            positional_scale=float(lm.get("positional_scale", 1.0)),
            activation=str(lm.get("activation", "gelu")),
            t5_name=str(cond.get("t5", {}).get("name", "t5-base")), t5_dim_hint=None,
            cfg_coef=float(cfg.get("classifier_free_guidance", {}).get("inference_coef", 3.0)),
            sample_rate=int(cfg.get("sample_rate", 32000)),
            segment_duration=float(cfg.get("dataset", {}).get("segment_duration", 30)),
            prepend=prepend,
        )


# Hub names of text encoders / codecs that a local directory's subfolders replace.
LOCAL_COMPONENTS = {"t5": "t5", "encodec": "encodec", "demucs": "demucs"}


def resolve_component(release_dir: Path, component: str, hub_name: str) -> str:
    """Local subfolder (``t5/``, ``encodec/``) of a release dir if present, else the hub name."""
    sub = release_dir / LOCAL_COMPONENTS[component]
    return str(sub) if sub.is_dir() else hub_name
