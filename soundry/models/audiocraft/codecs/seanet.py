"""audiocraft's SEANet encoder and decoder (EnCodec's convolutional autoencoder), module names
matching audiocraft's state dict (``encoder.model.N...`` / ``decoder.model.N...``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Module):
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


class ConvTr(nn.Module):
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


class Residual(nn.Module):
    """SEANetResnetBlock: act, conv(kernel, dilation), act, conv(1), plus the (identity) shortcut."""

    def __init__(self, dim: int, kernel: int, dilation: int, act: Callable[[], nn.Module], compress: int,
                 causal: bool, pad_mode: str, true_skip: bool):
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(act(), Conv(dim, hidden, kernel, dilation=dilation, causal=causal,
                                               pad_mode=pad_mode),
                                   act(), Conv(hidden, dim, 1, causal=causal, pad_mode=pad_mode))
        self.shortcut = nn.Identity() if true_skip else Conv(dim, dim, 1, causal=causal, pad_mode=pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class LSTM(nn.Module):
    """StreamableLSTM: an LSTM over time with a skip connection."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


class _Parts:
    """The shared SEANet settings of one direction (encoder or decoder), from xp.cfg's ``seanet``."""

    def __init__(self, s: dict):
        alpha = (s.get("activation_params") or {}).get("alpha", 1.0)
        act_cls = getattr(nn, s.get("activation", "ELU"))
        self.act = lambda: act_cls(alpha=alpha) if act_cls is nn.ELU else act_cls()  # noqa: E731
        self.causal, self.pad_mode = bool(s.get("causal", False)), s.get("pad_mode", "reflect")
        self.s = s

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1) -> Conv:
        return Conv(cin, cout, kernel, stride, causal=self.causal, pad_mode=self.pad_mode)

    def residuals(self, dim: int) -> list[nn.Module]:
        s = self.s
        return [Residual(dim, s["residual_kernel_size"], s["dilation_base"] ** j, self.act, s.get("compress", 2),
                         self.causal, self.pad_mode, s.get("true_skip", True))
                for j in range(int(s["n_residual_layers"]))]


def seanet_encoder(s: dict) -> nn.Sequential:
    """audio [B, channels, N] → latent [B, dimension, N / hop] (SEANetEncoder, ratios reversed)."""
    p, nf = _Parts(s), int(s["n_filters"])
    layers: list[nn.Module] = [p.conv(s["channels"], nf, s["kernel_size"])]
    mult = 1
    for ratio in reversed(list(s["ratios"])):
        layers += p.residuals(mult * nf)
        layers += [p.act(), p.conv(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio)]
        mult *= 2
    if s.get("lstm"):
        layers.append(LSTM(mult * nf, int(s["lstm"])))
    layers += [p.act(), p.conv(mult * nf, s["dimension"], s["last_kernel_size"])]
    return nn.Sequential(*layers)


def seanet_decoder(s: dict) -> nn.Sequential:
    """latent [B, dimension, T] → audio [B, channels, T * hop] (SEANetDecoder)."""
    p, nf = _Parts(s), int(s["n_filters"])
    mult = 2 ** len(s["ratios"])
    layers: list[nn.Module] = [p.conv(s["dimension"], mult * nf, s["kernel_size"])]
    if s.get("lstm"):
        layers.append(LSTM(mult * nf, int(s["lstm"])))
    for ratio in s["ratios"]:
        layers += [p.act(), ConvTr(mult * nf, mult * nf // 2, 2 * ratio, ratio, p.causal,
                                   float(s.get("trim_right_ratio", 1.0)))]
        layers += p.residuals(mult * nf // 2)
        mult //= 2
    layers += [p.act(), p.conv(nf, s["channels"], s["last_kernel_size"])]
    if s.get("final_activation"):
        layers.append(getattr(nn, s["final_activation"])(**(s.get("final_activation_params") or {})))
    return nn.Sequential(*layers)
