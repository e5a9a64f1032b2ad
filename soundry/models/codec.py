"""Audio codecs (decode path only): audiocraft's EnCodec (SEANet decoder + residual VQ), as in
AudioGen's ``compression_state_dict.bin``, and transformers' ``EncodecModel`` for the
``{"pretrained": "facebook/encodec_32khz"}`` packages of MusicGen."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundry.models.checkpoint import CheckpointError, load_package, parse_cfg


class Codec(nn.Module):
    """Common interface: ``decode(codes [B, K, T]) -> audio [B, C, N]``."""

    sample_rate: int
    frame_rate: float
    channels: int
    n_q: int
    cardinality: int

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# -- audiocraft EnCodec ------------------------------------------------------------------------------
class _Conv(nn.Module):
    """audiocraft's StreamableConv1d (non-causal or causal), weight norm folded into the weight."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 causal: bool = False, pad_mode: str = "reflect"):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride, dilation=dilation)
        self.causal, self.pad_mode = causal, pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (self.conv.kernel_size[0] - 1) * self.conv.dilation[0] + 1
        stride = self.conv.stride[0]
        pad_total = k - stride
        n_frames = (x.shape[-1] - k + pad_total) / stride + 1
        extra = (math.ceil(n_frames) - 1) * stride + (k - pad_total) - x.shape[-1]
        if self.causal:
            left, right = pad_total, extra
        else:
            right = pad_total // 2
            left, right = pad_total - right, right + extra
        return self.conv(_pad1d(x, left, right, self.pad_mode))


def _pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    if mode != "reflect":
        return F.pad(x, (left, right), mode, 0.0)
    extra = max(0, max(left, right) - x.shape[-1] + 1)
    padded = F.pad(F.pad(x, (0, extra)), (left, right), "reflect")
    return padded[..., : padded.shape[-1] - extra]


class _ConvTr(nn.Module):
    """audiocraft's StreamableConvTranspose1d: transposed conv, then trim the padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, causal: bool, trim_right_ratio: float):
        super().__init__()
        self.convtr = nn.ConvTranspose1d(cin, cout, kernel, stride)
        self.causal, self.trim_right_ratio = causal, trim_right_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_total = self.convtr.kernel_size[0] - self.convtr.stride[0]
        y = self.convtr(x)
        right = math.ceil(pad_total * self.trim_right_ratio) if self.causal else pad_total // 2
        left = pad_total - right
        return y[..., left: y.shape[-1] - right]


class _Residual(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int, act: Callable[[], nn.Module], compress: int,
                 causal: bool, pad_mode: str, true_skip: bool):
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(act(), _Conv(dim, hidden, kernel, dilation=dilation, causal=causal,
                                                pad_mode=pad_mode),
                                   act(), _Conv(hidden, dim, 1, causal=causal, pad_mode=pad_mode))
        self.shortcut = nn.Identity() if true_skip else _Conv(dim, dim, 1, causal=causal, pad_mode=pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class _LSTM(nn.Module):
    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


class AudiocraftEncodec(Codec):
    """SEANet decoder + RVQ codebooks, module names matching audiocraft's state dict."""

    def __init__(self, cfg: dict):
        super().__init__()
        s, rvq, enc = cfg["seanet"], cfg["rvq"], cfg["encodec"]
        if s.get("disable_norm_outer_blocks", 0):
            raise CheckpointError("seanet.disable_norm_outer_blocks != 0 is not supported")
        if enc.get("renormalize"):
            raise CheckpointError("encodec.renormalize is not supported for decoding without scales")
        dec = {**s, **(s.get("decoder") or {})}
        alpha = (s.get("activation_params") or {}).get("alpha", 1.0)
        act_cls = getattr(nn, s.get("activation", "ELU"))
        act = lambda: act_cls(alpha=alpha) if act_cls is nn.ELU else act_cls()  # noqa: E731
        causal, pad_mode = bool(s.get("causal", False)), s.get("pad_mode", "reflect")
        ratios, nf = list(s["ratios"]), int(s["n_filters"])
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [_Conv(s["dimension"], mult * nf, s["kernel_size"], causal=causal, pad_mode=pad_mode)]
        if s.get("lstm"):
            layers.append(_LSTM(mult * nf, int(s["lstm"])))
        for ratio in ratios:
            layers += [act(), _ConvTr(mult * nf, mult * nf // 2, 2 * ratio, ratio, causal,
                                      float(dec.get("trim_right_ratio", 1.0)))]
            for j in range(int(s["n_residual_layers"])):
                layers.append(_Residual(mult * nf // 2, s["residual_kernel_size"], s["dilation_base"] ** j, act,
                                        s.get("compress", 2), causal, pad_mode, s.get("true_skip", True)))
            mult //= 2
        layers += [act(), _Conv(nf, s["channels"], s["last_kernel_size"], causal=causal, pad_mode=pad_mode)]
        if dec.get("final_activation"):
            layers.append(getattr(nn, dec["final_activation"])(**(dec.get("final_activation_params") or {})))
        self.decoder = nn.Sequential(*layers)
        self.codebooks = nn.Parameter(torch.zeros(rvq["n_q"], rvq["bins"], s["dimension"]), requires_grad=False)
        self.sample_rate = int(enc.get("sample_rate", cfg.get("sample_rate")))
        self.channels = int(s["channels"])
        self.frame_rate = self.sample_rate / float(np.prod(ratios))
        self.n_q, self.cardinality = int(rvq["n_q"]), int(rvq["bins"])

    def load_release_state(self, state: dict[str, torch.Tensor]) -> None:
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if not key.startswith("decoder.model."):
                continue
            key = key.replace("decoder.model.", "decoder.", 1).replace(".conv.conv.", ".conv.")
            key = key.replace(".convtr.convtr.", ".convtr.")
            if key.endswith("weight_v"):
                g = state[_release_key(key, "weight_g", state)]
                dims = tuple(range(1, value.dim()))
                mapped[key[: -len("weight_v")] + "weight"] = g * value / value.norm(dim=dims, keepdim=True)
            elif not key.endswith("weight_g"):
                mapped[key] = value
        mapped["codebooks"] = torch.stack([state[f"quantizer.vq.layers.{i}._codebook.embed"]
                                           for i in range(self.n_q)])
        missing, unexpected = self.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"EnCodec weights do not match its xp.cfg (missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]})")

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        latent = sum(F.embedding(codes[:, k], self.codebooks[k]) for k in range(codes.shape[1]))  # [B, T, D]
        return self.decoder(latent.transpose(1, 2))


def _release_key(mapped_key: str, suffix: str, state: dict) -> str:
    """The original state-dict key for a mapped weight_v key's sibling (weight_g)."""
    for key in state:
        if key.endswith(suffix):
            m = key.replace("decoder.model.", "decoder.", 1).replace(".conv.conv.", ".conv.")
            if m.replace(".convtr.convtr.", ".convtr.")[: -len(suffix)] == mapped_key[: -len("weight_v")]:
                return key
    raise CheckpointError(f"no {suffix} for {mapped_key}")


# -- transformers EncodecModel (MusicGen) ------------------------------------------------------------
class HFEncodec(Codec):
    def __init__(self, path: str):
        super().__init__()
        from transformers import EncodecModel

        self.model = EncodecModel.from_pretrained(path).eval()
        c = self.model.config
        self.sample_rate, self.channels = int(c.sampling_rate), int(c.audio_channels)
        self.frame_rate = self.sample_rate / float(np.prod(c.upsampling_ratios))
        self.cardinality = int(c.codebook_size)
        self.n_q = int(self.model.quantizer.num_quantizers if hasattr(self.model.quantizer, "num_quantizers")
                       else len(self.model.quantizer.layers))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.model.decode(codes[None], [None])
        return out.audio_values if hasattr(out, "audio_values") else out[0]


def load_codec(release_dir: Path, resolve_pretrained: Callable[[str], Path]) -> Codec:
    """The codec of a release directory (``compression_state_dict.bin``)."""
    path = Path(release_dir) / "compression_state_dict.bin"
    pkg = load_package(path)
    if "pretrained" in pkg:
        name = str(pkg["pretrained"])
        return HFEncodec(str(resolve_pretrained(name)))
    cfg = parse_cfg(pkg, path)
    if cfg.get("compression_model", "encodec") != "encodec":
        raise CheckpointError(f"{path}: compression model {cfg.get('compression_model')!r} is not supported")
    codec = AudiocraftEncodec(cfg)
    codec.load_release_state(pkg["best_state"])
    return codec.eval()
