"""Transformers-format MusicGen checkpoints (``MusicgenForConditionalGeneration`` and
``MusicgenMelodyForConditionalGeneration``) as soundry models.

A folder with ``config.json`` (``model_type: musicgen``, sections ``text_encoder``, ``audio_encoder``,
``decoder``), weights in ``model.safetensors`` (or shards listed by ``model.safetensors.index.json``), the T5
tokenizer's files and, usually, ``generation_config.json``. Its decoder is mapped onto soundry's
``TransformerLM`` (q/k/v packed as the LM holds them), its T5 and EnCodec run as transformers modules, so the
engine, packed weights, int8/bf16, compile and streaming apply unchanged. A PEFT LoRA adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) is merged into the weights at load by ``peft`` itself.

Only safetensors are read (a ``.bin`` is a pickle, which can run code when loaded), and no code from a
repository is run: the classes are transformers' own, chosen by ``model_type``, never ``auto_map``.

Where transformers' MusicGen differs from audiocraft's, a transformers-format model follows transformers (that
is how these checkpoints were trained and are used):
- positions: transformers' sinusoid formula (``LMConfig.layout == "transformers"`` in
  ``soundry.models.audiocraft.lm.transformer``);
- padded text positions are masked in cross-attention, also in a joint batch (``AudioModel.conditions``);
- the unconditional branch is zeroed encoder states with an all-zero attention mask. soundry's guidance row for
  an empty negative prompt holds zeros too and attends to one of them; transformers' decoder has no attention
  biases, so both give a cross-attention output of exactly zero;
- the delay pattern fills with the generation config's ``decoder_start_token_id`` (``LMConfig.special_token``),
  2048 in the released models.

A melody checkpoint (``model_type: musicgen_melody``) has no cross-attention: its decoder reads the projected
chroma (``audio_enc_to_dec_proj``) then the projected text, prepended to the codes (``LMConfig.prepend``, as
audiocraft's fuser). Where transformers' melody model differs from audiocraft's, it follows transformers:
- the chroma is transformers' feature extractor's (``TransformersMelodyConditioner``: its filter bank, its
  ``preprocessor_config.json``, the wave cut to ``chunk_length`` before the chroma, ``config.chroma_length``);
- the text's padded positions are zero vectors that the decoder attends to (its generate drops the text mask), also
  in a joint batch, padded to the batch's longest prompt (``AudioModel.conditions``); the guidance row's text is
  zeros of the same length and its chroma bin 0 in every frame, as the conditional row's without a melody.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from soundry.models.audiocraft.checkpoint import LMConfig
from soundry.models.audiocraft.conditioners.melody import MelodyConditioner
from soundry.models.errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MELODY_TYPE = "musicgen_melody"
PREPROCESSOR_CONFIG = "preprocessor_config.json"  # the melody feature extractor's settings
_DEC = "decoder.model.decoder."
_RENAMES = {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm_cross", "final_layer_norm": "norm2",
            "fc1": "linear1", "fc2": "linear2"}


def is_transformers_dir(path: Path) -> bool:
    """Whether ``path`` holds a transformers-format checkpoint (a ``config.json`` naming a MusicGen)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return str(json.loads(cfg.read_text()).get("model_type", "")).startswith("musicgen")
    except (OSError, ValueError):
        return False


def read_config(model_dir: Path) -> tuple[dict, dict]:
    """``config.json`` and ``generation_config.json`` (empty when absent), checked for what soundry serves."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json: not a transformers-format checkpoint")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    kind = cfg.get("model_type")
    if kind not in ("musicgen", MELODY_TYPE):
        raise CheckpointError(f"{path} names model_type {kind!r}; soundry serves transformers' 'musicgen' "
                              f"(MusicgenForConditionalGeneration) and {MELODY_TYPE!r} "
                              "(MusicgenMelodyForConditionalGeneration) checkpoints")
    for section in ("text_encoder", "audio_encoder", "decoder"):
        if not isinstance(cfg.get(section), dict):
            raise CheckpointError(f"{path} lacks its {section!r} section")
    if cfg["text_encoder"].get("model_type") != "t5":
        raise CheckpointError(f"{path}: text encoder {cfg['text_encoder'].get('model_type')!r} is not supported "
                              "(only t5)")
    if cfg["audio_encoder"].get("model_type") != "encodec":
        raise CheckpointError(f"{path}: audio encoder {cfg['audio_encoder'].get('model_type')!r} is not supported "
                              "(only encodec)")
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    return cfg, gen


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint; a folder with only ``pytorch_model.bin`` is refused."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS).is_file():
        return [model_dir / WEIGHTS]
    if (model_dir / INDEX).is_file():
        index = json.loads((model_dir / INDEX).read_text())
        files = sorted({model_dir / name for name in index.get("weight_map", {}).values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{model_dir}: {INDEX} lists {', '.join(missing[:3])}, which are not there")
        return files
    if any(model_dir.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{model_dir} has its weights only as pytorch_model.bin: soundry reads "
                              "transformers-format weights from safetensors only, because a .bin file is a pickle "
                              "that can run code when loaded (save it again with save_pretrained(..., "
                              "safe_serialization=True))")
    raise CheckpointError(f"{model_dir} has config.json but no {WEIGHTS} (nor {INDEX})")


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class Weights(Mapping):
    """A checkpoint's tensors, each read from its safetensors file when asked for (the format: an 8-byte
    little-endian header length, a JSON header of name → dtype, shape, byte offsets, then the data). Read
    into memory of its own, not through a memory map: the load holds the LM's converted weights and one
    tensor of the file's at a time, never the file's pages besides (a map's touched pages stay resident)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                try:
                    header = json.loads(f.read(size))
                except ValueError as exc:
                    raise CheckpointError(f"{path} is not a safetensors file ({exc})") from exc
            for key, info in header.items():
                if key != "__metadata__":
                    self._where[key] = (path, info, 8 + size)

    def __getitem__(self, key: str) -> torch.Tensor:
        path, info, base = self._where[key]
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has dtype {info['dtype']}, which soundry does not read")
        begin, end = info["data_offsets"]
        data = torch.empty(end - begin, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(base + begin)
            if f.readinto(memoryview(data.numpy())) != end - begin:
                raise CheckpointError(f"{path} is truncated (tensor {key})")
        return data.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_weights(model_dir: Path) -> Weights:
    return Weights(weight_files(model_dir))


def lm_config(cfg: dict, gen: dict) -> LMConfig:
    """The LM's shape from the ``decoder`` section, and guidance / the delay pattern's token from the
    generation config."""
    d = cfg["decoder"]
    melody = cfg.get("model_type") == MELODY_TYPE
    dim, ffn, k = int(d.get("hidden_size", 1024)), int(d.get("ffn_dim", 4096)), int(d.get("num_codebooks", 4))
    channels = int(d.get("audio_channels", 1))
    if channels not in (1, 2) or k % channels:
        raise CheckpointError(f"decoder audio_channels={channels} with {k} codebooks is not supported")
    if ffn % dim:
        raise CheckpointError(f"decoder ffn_dim={ffn} is not a multiple of hidden_size={dim}")
    act = str(d.get("activation_function", "gelu"))
    if act not in ("gelu", "relu"):
        raise CheckpointError(f"decoder activation_function {act!r} is not supported (gelu, relu)")
    if dim % 2:
        raise CheckpointError(f"decoder hidden_size={dim} is odd (the sinusoid needs an even width)")
    card = int(d.get("vocab_size", 2048))
    # transformers' generate builds the delay pattern with decoder_start_token_id (and its decoder embeds
    # card + 1 entries): the token every position outside the pattern holds.
    special = gen.get("decoder_start_token_id", d.get("decoder_start_token_id", d.get("pad_token_id", card)))
    special = card if special is None else int(special)
    if not 0 <= special <= card:
        raise CheckpointError(f"decoder_start_token_id={special} is outside the decoder's {card + 1} embeddings")
    # stereo: codebooks interleaved left/right, each pair with the same delay (as audiocraft's stereo releases)
    delays = tuple(q // channels for q in range(k))
    return LMConfig(
        dim=dim, num_heads=int(d.get("num_attention_heads", 16)), num_layers=int(d.get("num_hidden_layers", 24)),
        hidden_scale=ffn // dim, n_q=k, card=card, delays=delays, norm_first=True, bias_ff=False, bias_attn=False,
        bias_proj=False, cross_attention=not melody, positional_embedding="sin", max_period=10000.0,
        positional_scale=1.0,
        activation=act, t5_name=str(cfg["text_encoder"].get("_name_or_path") or "t5"), t5_dim_hint=None,
        cfg_coef=float(gen.get("guidance_scale") or 3.0),
        sample_rate=int(cfg["audio_encoder"].get("sampling_rate", 32000)), segment_duration=30.0,
        layout="transformers", special_token=special,
        # transformers' melody decoder reads the chroma, then the text, before the codes (no cross-attention)
        prepend=("self_wav", "description") if melody else ())


def decoder_state(state: Mapping[str, torch.Tensor], cfg: LMConfig, dtype: torch.dtype | None = None
                  ) -> dict[str, torch.Tensor]:
    """transformers' decoder weights under ``TransformerLM``'s names (q, k, v packed as it holds them),
    each cast to ``dtype`` as it is made."""
    out = _Cast(dtype)
    try:
        for q in range(cfg.n_q):
            out[f"emb.{q}.weight"] = state[f"{_DEC}embed_tokens.{q}.weight"]
            out[f"linears.{q}.weight"] = state[f"decoder.lm_heads.{q}.weight"]
        for i in range(cfg.num_layers):
            src, dst = f"{_DEC}layers.{i}.", f"layers.{i}."
            sa, ca = src + "self_attn.", src + "encoder_attn."
            out[dst + "self_attn.qkv_proj.weight"] = torch.cat([state[sa + f"{p}_proj.weight"] for p in "qkv"])
            out[dst + "self_attn.out_proj.weight"] = state[sa + "out_proj.weight"]
            if cfg.cross_attention:  # a melody decoder has none
                out[dst + "cross_attention.q_proj.weight"] = state[ca + "q_proj.weight"]
                out[dst + "cross_attention.kv_proj.weight"] = torch.cat([state[ca + "k_proj.weight"],
                                                                         state[ca + "v_proj.weight"]])
                out[dst + "cross_attention.out_proj.weight"] = state[ca + "out_proj.weight"]
            for name, ours in _RENAMES.items():
                if ours == "norm_cross" and not cfg.cross_attention:
                    continue
                for kind in (("weight", "bias") if "norm" in ours else ("weight",)):
                    out[f"{dst}{ours}.{kind}"] = state[f"{src}{name}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"out_norm.{kind}"] = state[f"{_DEC}layer_norm.{kind}"]
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint's weights lack {exc.args[0]} (its config.json describes another "
                              "shape)") from None
    return dict(out)


class _Cast(dict):
    """A dict that casts what is stored in it (so a float16 file's float32 copy is made one tensor at a time)."""

    def __init__(self, dtype: torch.dtype | None):
        super().__init__()
        self.dtype = dtype

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        super().__setitem__(key, value if self.dtype is None else value.to(self.dtype))


def _submodule_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: state[k] for k in state if k.startswith(prefix)}


def _build(cls, config, weights: dict[str, torch.Tensor], what: str) -> nn.Module:
    """A transformers module built with its parameters on the meta device (buffers, some computed at
    construction, are real) and given the checkpoint's tensors: no second copy of the weights."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = cls(config)
    expected = set(module.state_dict())
    # older checkpoints (e.g. the released musicgen ones) keep weight norm as weight_g / weight_v
    for key in list(weights):
        for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                         (".weight_v", ".parametrizations.weight.original1")):
            if key.endswith(old) and key not in expected and key[: -len(old)] + new in expected:
                weights[key[: -len(old)] + new] = weights.pop(key)
    tied = "encoder.embed_tokens.weight"  # T5 ties it to shared.weight; save_pretrained keeps one of the two
    for key in [k for k in expected if k.endswith(tied) and k not in weights]:
        shared = key[: -len(tied)] + "shared.weight"
        if shared in weights:
            weights[key] = weights[shared]
    missing, unexpected = module.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"the {what} weights do not match config.json (missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]})")
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"the {what} has no weights for {leftover[:4]}")
    return module.float().eval()


def merge_adapter(state: Mapping[str, torch.Tensor], cfg: dict, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The base weights with a PEFT LoRA adapter merged in, by ``peft`` itself (``merge_and_unload``) on
    transformers' own ``MusicgenForConditionalGeneration`` built around the base tensors (no copy)."""
    adapter_dir = Path(adapter_dir)
    conf_path, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not conf_path.is_file():
        raise CheckpointError(f"adapter {adapter_dir} has no {ADAPTER_CONFIG}")
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise CheckpointError(f"adapter {adapter_dir} has its weights only as adapter_model.bin: soundry reads "
                                  "adapters from safetensors only (a .bin file is a pickle that can run code)")
        raise CheckpointError(f"adapter {adapter_dir} has no {ADAPTER_WEIGHTS}")
    peft_type = json.loads(conf_path.read_text()).get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(f"adapter {adapter_dir} is a {peft_type} adapter; soundry merges LoRA adapters only")
    import transformers
    from peft import PeftModel

    kind = "MusicgenMelody" if cfg.get("model_type") == MELODY_TYPE else "Musicgen"
    config = getattr(transformers, f"{kind}Config").from_dict(cfg)
    model = _build(getattr(transformers, f"{kind}ForConditionalGeneration"), config, dict(state), "base model")
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        merged = peft_model.merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"adapter {adapter_dir} does not fit the base model: {exc}") from exc
    return dict(merged.state_dict())


class TransformersMelodyConditioner(MelodyConditioner):
    """A transformers-format melody model's chroma: what transformers' ``MusicgenMelodyFeatureExtractor`` computes
    from the melody's ``vocals + other`` stems, projected by ``audio_enc_to_dec_proj``.

    transformers' feature extractor needs torchaudio, which soundry does not depend on; its computation is
    ``ChromaExtractor``'s with ``argmax`` (torchaudio's normalized power spectrogram, a chroma filter bank, inf-norm,
    one-hot argmax): here with transformers' own filter bank (``transformers.audio_utils.chroma_filter_bank``) and
    the settings of the checkpoint's ``preprocessor_config.json``; the tests compare it with the feature extractor's
    output. transformers leaves stem separation to its user, and its documentation separates the melody with demucs
    first, as audiocraft's conditioner does (which is how the checkpoints were trained): the stems are demucs's, as
    for an audiocraft-format model (``MelodyConditioner.stems``: the melody reaches demucs through the model's rate,
    mono, and its stems come back resampled with julius, as in audiocraft; transformers' documentation gives demucs
    the melody at its own rate, and its feature extractor resamples the stems with torchaudio's sinc filter. With the
    tiny test demucs, 47 of 48 chroma frames of the two ways agree).
    """

    def __init__(self, dim: int, chroma_length: int, sample_rate: int = 32000, n_chroma: int = 12,
                 n_fft: int = 16384, hop_length: int = 4096, chunk_length: float = 30.0,
                 demucs_dir: Path | None = None):
        from transformers.audio_utils import chroma_filter_bank

        super().__init__(dim, sample_rate=sample_rate, n_chroma=n_chroma, duration=chunk_length,
                         demucs_dir=demucs_dir, nfft=n_fft, winlen=n_fft, winhop=hop_length, argmax=True)
        bank = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sample_rate, tuning=0)
        self.extractor.fbanks.copy_(torch.from_numpy(bank).float())
        # transformers tiles or cuts the projected chroma to config.chroma_length (audiocraft: the frames of its
        # training segment, the same 235 for 30 s)
        self.chroma_len = int(chroma_length)
        self.max_samples = int(chunk_length * sample_rate)

    def stems(self, wav: torch.Tensor, shift, sample_rate: int | None = None) -> torch.Tensor:
        # transformers' feature extractor cuts its input to chunk_length seconds before the chroma (audiocraft
        # computes the chroma of the whole melody, then cuts the chroma: they differ in the last frame)
        return super().stems(wav, shift, sample_rate)[..., : self.max_samples]

    @torch.no_grad()
    def null_chroma(self, batch: int = 1) -> torch.Tensor:
        """transformers' null melody (a request without one, and the guidance row): bin 0 in every frame (what
        audiocraft's chroma of a one-sample silence gives too)."""
        null = torch.zeros(batch, self.chroma_len, self.extractor.n_chroma, device=self.device)
        null[..., 0] = 1
        return null


def melody_conditioner(model_dir: Path, cfg: dict, proj: dict[str, torch.Tensor], dim: int
                       ) -> TransformersMelodyConditioner:
    """A melody checkpoint's chroma conditioner: the feature extractor's settings from ``preprocessor_config.json``
    (its defaults when absent), the projection ``audio_enc_to_dec_proj`` (identity when transformers has none:
    ``num_chroma`` equal to the decoder's width), demucs from a ``demucs/`` folder beside the checkpoint when there
    is one, else from the hub on first use."""
    path = Path(model_dir) / PREPROCESSOR_CONFIG
    try:
        features = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    n_chroma = int(cfg.get("num_chroma", 12))
    if int(features.get("feature_size", n_chroma)) != n_chroma:
        raise CheckpointError(f"{path}: feature_size {features['feature_size']} is not config.json's num_chroma "
                              f"{n_chroma}")
    demucs_dir = Path(model_dir) / "demucs"
    cond = TransformersMelodyConditioner(
        dim, chroma_length=int(cfg.get("chroma_length", 235)), n_chroma=n_chroma,
        sample_rate=int(features.get("sampling_rate", 32000)), n_fft=int(features.get("n_fft", 16384)),
        hop_length=int(features.get("hop_length", 4096)), chunk_length=float(features.get("chunk_length", 30)),
        demucs_dir=demucs_dir if demucs_dir.is_dir() else None)
    if not proj and n_chroma == dim:
        proj = {"weight": torch.eye(dim), "bias": torch.zeros(dim)}
    elif not proj:
        raise CheckpointError(f"{model_dir}: the chroma has {n_chroma} bins, the decoder is {dim} wide, and there is "
                              "no audio_enc_to_dec_proj")
    cond.output_proj.load_state_dict(proj)
    return cond.eval()


def load_transformers_model(model_dir: Path, name: str, family: str, device: torch.device, precision: str,
                            max_text_tokens: int, packed: bool | str, adapter_dir: Path | None = None):
    """An ``AudioModel`` from a transformers-format folder (optionally with a LoRA adapter merged)."""
    from transformers import AutoTokenizer, EncodecConfig, EncodecModel, T5Config, T5EncoderModel

    from soundry.models.audiocraft.codecs.encodec import HFEncodec, InterleavedStereo
    from soundry.models.audiocraft.conditioners.text import TextConditioner
    from soundry.models.audiocraft.lm.precision import DTYPES, apply_precision, check_precision
    from soundry.models.audiocraft.lm.transformer import TransformerLM
    from soundry.models.audiocraft.model import AudioModel

    model_dir = Path(model_dir)
    cfg_dict, gen = read_config(model_dir)
    cfg = lm_config(cfg_dict, gen)
    state = read_weights(model_dir)
    if adapter_dir is not None:
        state = merge_adapter(state, cfg_dict, adapter_dir)

    # the text and audio encoders' tensors, then the decoder's, each converted as it is read (``Weights``)
    text_state, audio_state = _submodule_state(state, "text_encoder."), _submodule_state(state, "audio_encoder.")
    proj = {k: state[f"enc_to_dec_proj.{k}"].float() for k in ("weight", "bias") if f"enc_to_dec_proj.{k}" in state}
    chroma_proj = {k: state[f"audio_enc_to_dec_proj.{k}"].float() for k in ("weight", "bias")
                   if f"audio_enc_to_dec_proj.{k}" in state}
    with torch.device("meta"):
        lm = TransformerLM(cfg)
    weights = decoder_state(state, cfg, DTYPES.get(precision, torch.float32))
    del state
    missing, unexpected = lm.load_state_dict(weights, strict=False, assign=True)
    del weights
    if missing or unexpected:
        raise CheckpointError(f"{model_dir}: decoder weights do not match config.json (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    lm = apply_precision(lm.eval(), precision, device, packed=packed)
    check_precision(lm, precision, device)

    t5 = _build(T5EncoderModel, T5Config.from_dict(cfg_dict["text_encoder"]), text_state, "text encoder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{model_dir} has no usable tokenizer files (tokenizer.json or spiece.model): "
                              f"{exc}") from exc
    t5_dim, dim = int(t5.config.d_model), cfg.dim
    conditioner = TextConditioner(str(model_dir), output_dim=dim, t5_dim=t5_dim, max_tokens=max_text_tokens,
                                  tokenizer=tokenizer, t5=t5)
    if not proj and t5_dim == dim:  # transformers projects only when the widths differ: identity (exact in fp32)
        proj = {"weight": torch.eye(dim), "bias": torch.zeros(dim)}
    elif not proj:
        raise CheckpointError(f"{model_dir}: the text encoder is {t5_dim} wide, the decoder {dim}, and there is no "
                              "enc_to_dec_proj")
    conditioner.output_proj.load_state_dict(proj)
    conditioner = conditioner.eval().to(device)

    encodec = _build(EncodecModel, EncodecConfig.from_dict(cfg_dict["audio_encoder"]), audio_state, "audio encoder")
    codec = HFEncodec(model=encodec)
    channels = int(cfg_dict["decoder"].get("audio_channels", 1))
    codec.set_num_codebooks(cfg.n_q // channels)
    if channels == 2:
        codec = InterleavedStereo(codec)
    codec = codec.eval().to(device)
    melody = None
    if cfg.prepend:
        melody = melody_conditioner(model_dir, cfg_dict, chroma_proj, dim).to(device)
    model = AudioModel(name, family, cfg, lm, conditioner, codec, source=model_dir, melody=melody)
    model.precision = precision
    log.info("loaded %s (transformers format%s) from %s on %s (%s)", name,
             f", adapter {adapter_dir}" if adapter_dir else "", model_dir, device, precision)
    return model
