"""Audio codecs: audiocraft's EnCodec (SEANet autoencoder + residual VQ), as in AudioGen's
``compression_state_dict.bin``; transformers' ``EncodecModel`` for the ``{"pretrained":
"facebook/encodec_32khz"}`` packages of MusicGen; and the stereo wrapper of the stereo MusicGen
releases (audiocraft's ``InterleaveStereoCompressionModel``: the mono codec on each channel, codebooks
interleaved L1, R1, L2, R2, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundry.models.audiocraft.checkpoint import load_package, parse_cfg
from soundry.models.audiocraft.codecs.seanet import seanet_decoder, seanet_encoder
from soundry.models.errors import CheckpointError


class Codec(nn.Module):
    """Common interface: ``encode(audio [B, C, N]) -> codes [B, K, T]`` and
    ``decode(codes [B, K, T]) -> audio [B, C, N]``; ``latent`` is the encoder's output before
    quantisation, per channel [B, C, D, T]."""

    sample_rate: int
    frame_rate: float
    channels: int
    n_q: int
    cardinality: int

    def encode(self, audio: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def latent(self, audio: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """The quantizer's decode of ``codes`` [B, K, T]: the latent [B, D, T] the decoder reads (audiocraft's
        ``decode_latent``; mono codecs)."""
        raise NotImplementedError

    def set_num_codebooks(self, n: int) -> None:
        """Use the first ``n`` codebooks (xp.cfg's ``compression_model_n_q``)."""
        if not 1 <= n <= self.total_codebooks:
            raise CheckpointError(f"xp.cfg compression_model_n_q={n}: the codec has {self.total_codebooks} codebooks")
        self.n_q = n

    @property
    def total_codebooks(self) -> int:
        return self.n_q


# -- audiocraft EnCodec ------------------------------------------------------------------------------
class AudiocraftEncodec(Codec):
    """SEANet encoder/decoder + RVQ codebooks, module names matching audiocraft's state dict."""

    def __init__(self, cfg: dict):
        super().__init__()
        s, rvq, enc = cfg["seanet"], cfg["rvq"], cfg["encodec"]
        if s.get("disable_norm_outer_blocks", 0):
            raise CheckpointError("compression xp.cfg seanet.disable_norm_outer_blocks != 0 is not supported")
        if enc.get("renormalize"):
            raise CheckpointError("compression xp.cfg encodec.renormalize is not supported")
        common = {k: v for k, v in s.items() if k not in ("encoder", "decoder")}
        self.encoder = seanet_encoder({**common, **(s.get("encoder") or {})})
        self.decoder = seanet_decoder({**common, **(s.get("decoder") or {})})
        self.codebooks = nn.Parameter(torch.zeros(rvq["n_q"], rvq["bins"], s["dimension"]), requires_grad=False)
        self.sample_rate = int(enc.get("sample_rate", cfg.get("sample_rate")))
        self.channels = int(s["channels"])
        self.frame_rate = self.sample_rate / float(np.prod(s["ratios"]))
        self.n_q, self.cardinality = int(rvq["n_q"]), int(rvq["bins"])

    @property
    def total_codebooks(self) -> int:
        return self.codebooks.shape[0]

    def load_release_state(self, state: dict[str, torch.Tensor]) -> None:
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if not key.startswith(("encoder.model.", "decoder.model.")) or key.endswith("weight_g"):
                continue
            name = key.replace(".model.", ".", 1).replace(".conv.conv.", ".conv.")
            name = name.replace(".convtr.convtr.", ".convtr.")
            if key.endswith("weight_v"):  # weight norm: w = g * v / |v| over all dims but the first
                g = state[key[: -len("weight_v")] + "weight_g"]
                mapped[name[: -len("weight_v")] + "weight"] = g * value / value.norm(dim=tuple(range(1, value.dim())),
                                                                                   keepdim=True)
            else:
                mapped[name] = value
        mapped["codebooks"] = torch.stack([state[f"quantizer.vq.layers.{i}._codebook.embed"]
                                           for i in range(self.total_codebooks)])
        missing, unexpected = self.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"EnCodec weights do not match its xp.cfg (missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]})")

    @torch.no_grad()
    def latent(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encoder(audio)[:, None]

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Residual VQ as audiocraft's EuclideanCodebook: nearest code by the same distance formula."""
        residual = self.encoder(audio).transpose(1, 2)  # [B, T, D]
        codes = []
        for k in range(self.n_q):
            embed = self.codebooks[k]
            flat = residual.reshape(-1, residual.shape[-1])
            dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.t() + embed.pow(2).sum(1, keepdim=True).t())
            idx = dist.max(dim=-1).indices.view(residual.shape[:2])
            codes.append(idx)
            residual = residual - F.embedding(idx, embed)
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(F.embedding(codes[:, k], self.codebooks[k]) for k in range(codes.shape[1])).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decode_latent(codes))


# -- transformers EncodecModel (MusicGen) ------------------------------------------------------------
class HFEncodec(Codec):
    def __init__(self, path: str | None = None, model: nn.Module | None = None):
        """From a folder (``path``), or an ``EncodecModel`` already built (a transformers-format MusicGen's)."""
        super().__init__()
        from transformers import EncodecModel

        self.model = (model if model is not None else EncodecModel.from_pretrained(path)).eval()
        c = self.model.config
        self.sample_rate, self.channels = int(c.sampling_rate), int(c.audio_channels)
        self.frame_rate = self.sample_rate / float(np.prod(c.upsampling_ratios))
        self.cardinality = int(c.codebook_size)
        self.n_q = self.total_codebooks

    @property
    def total_codebooks(self) -> int:
        q = self.model.quantizer
        return int(q.num_quantizers if hasattr(q, "num_quantizers") else len(q.layers))

    def _bandwidth(self) -> float:
        """The target bandwidth that uses ``n_q`` codebooks (as audiocraft's HFEncodecCompressionModel)."""
        for bw in self.model.config.target_bandwidths:
            if self.model.quantizer.get_num_quantizers_for_bandwidth(bw) == self.n_q:
                return bw
        raise CheckpointError(f"the codec has no bandwidth with {self.n_q} codebooks "
                              f"(target_bandwidths {self.model.config.target_bandwidths})")

    @torch.no_grad()
    def latent(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(audio)[:, None]

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(audio, None, self._bandwidth())
        codes = out.audio_codes if hasattr(out, "audio_codes") else out[0]
        if codes.shape[0] != 1:
            raise RuntimeError("chunked EnCodec (chunk_length_s) is not supported")
        return codes[0]

    @torch.no_grad()
    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.quantizer.decode(codes.transpose(0, 1))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.model.decode(codes[None], [None])
        return out.audio_values if hasattr(out, "audio_values") else out[0]


# -- stereo -----------------------------------------------------------------------------------------
class InterleavedStereo(Codec):
    """A mono codec applied to the left and the right channel; codebooks interleaved [L1, R1, L2, R2, ...]."""

    def __init__(self, mono: Codec):
        super().__init__()
        if mono.channels != 1:
            raise CheckpointError(f"xp.cfg interleave_stereo_codebooks needs a mono codec ({mono.channels} channels)")
        self.mono = mono
        self.sample_rate, self.frame_rate, self.cardinality = mono.sample_rate, mono.frame_rate, mono.cardinality
        self.channels = 2

    @property
    def n_q(self) -> int:  # type: ignore[override]
        return 2 * self.mono.n_q

    def set_num_codebooks(self, n: int) -> None:
        self.mono.set_num_codebooks(n)  # audiocraft: compression_model_n_q counts codebooks per channel

    def _channels(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if audio.shape[1] != 2:
            raise ValueError(f"stereo codec needs 2-channel audio, got {audio.shape[1]}")
        return audio[:, :1], audio[:, 1:]

    @torch.no_grad()
    def latent(self, audio: torch.Tensor) -> torch.Tensor:
        left, right = self._channels(audio)
        return torch.cat([self.mono.latent(left), self.mono.latent(right)], dim=1)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        left, right = self._channels(audio)
        codes = torch.stack([self.mono.encode(left), self.mono.encode(right)], dim=2)  # [B, K, 2, T]
        return codes.flatten(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mono.decode(codes[:, 0::2]), self.mono.decode(codes[:, 1::2])], dim=1)


def load_codec(release_dir: Path, resolve_pretrained: Callable[[str], Path]) -> Codec:
    """The (mono) codec of a release directory (``compression_state_dict.bin``)."""
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


def wrap_codec(codec: Codec, lm_cfg: dict) -> Codec:
    """Apply the LM's xp.cfg to its codec as audiocraft's ``get_wrapped_compression_model`` does
    (stereo interleaving, ``compression_model_n_q``); refuse layouts this code cannot serve, naming the key."""
    channels = int(lm_cfg.get("channels", 1))
    inter = lm_cfg.get("interleave_stereo_codebooks") or {}
    if channels not in (1, 2):
        raise CheckpointError(f"xp.cfg channels={channels} is not supported (1 or 2)")
    if channels == 2:
        if not inter.get("use", False):
            raise CheckpointError("xp.cfg channels=2 without interleave_stereo_codebooks.use is not supported")
        if inter.get("per_timestep", False):
            raise CheckpointError("xp.cfg interleave_stereo_codebooks.per_timestep=true is not supported")
        codec = InterleavedStereo(codec)
    elif inter.get("use", False):
        raise CheckpointError("xp.cfg interleave_stereo_codebooks.use=true with channels=1 is not supported")
    if lm_cfg.get("compression_model_n_q") is not None:
        codec.set_num_codebooks(int(lm_cfg["compression_model_n_q"]))
    return codec
