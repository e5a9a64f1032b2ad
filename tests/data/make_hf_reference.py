"""Tiny transformers-format MusicGen checkpoints and what transformers itself generates with them.

Run from the repository root (needs transformers and peft, as installed by the project):

    .venv/bin/python tests/data/make_hf_reference.py

It writes, under tests/data/hf/:
- ``musicgen-hf-tiny/`` and ``musicgen-stereo-hf-tiny/``: ``MusicgenForConditionalGeneration.save_pretrained``
  folders (config.json, generation_config.json, model.safetensors, tokenizer files) with random weights: the
  text encoder is the tiny T5 of tests/data/musicgen-tiny/t5, a random tiny EnCodec (codebook of 64 entries),
  a 2-layer decoder of width 32 over 64-entry codebooks (pad / decoder-start token 64), 4 codebooks (mono) or 8
  (stereo, interleaved left/right).
- ``musicgen-hf-tiny-lora/``: a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) on the mono
  model, on the modules the musicgen "dreamboothing" recipe targets, with non-zero random weights.
- ``reference.pt``: for each model, transformers' own ``generate`` (greedy, ``guidance_scale=3.0``) of
  ``prompts`` padded together as one batch, and of ``prompts[0]`` alone: the audio codes it decodes
  (captured at its ``audio_encoder.decode`` call), ``max_new_tokens``, and the first samples of the audio,
  each from the saved folder as loaded by ``from_pretrained``. The LoRA entry is the PEFT model
  (``PeftModel.from_pretrained`` on the base, adapter not merged) generating the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    EncodecConfig,
    EncodecModel,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForCausalLM,
    MusicgenForConditionalGeneration,
    T5EncoderModel,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "hf"
T5_DIR = HERE / "musicgen-tiny" / "t5"
CODEBOOK = 64
PROMPTS = ["80s pop track with bassy drums and synth", "lofi"]
FRAMES = 20  # audio frames generated (0.4 s at 50 Hz)
AUDIO_SAMPLES = 2000
LORA_TARGETS = ["enc_to_dec_proj", "audio_enc_to_dec_proj", "k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2",
                "lm_heads.0"]  # as the musicgen dreamboothing training script


def rescale_(module: torch.nn.Module, seed: int) -> None:
    """Weights with std 1/sqrt(fan_in) (transformers' 0.02 init makes near-equal logits: ties everywhere)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and "parametrizations" not in name:
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def tiny_codec() -> EncodecModel:
    """A tiny EnCodec (codebook of ``CODEBOOK`` entries), its weights drawn from torch's global generator."""
    base = EncodecConfig.from_pretrained(HERE / "musicgen-tiny" / "encodec")
    return EncodecModel(EncodecConfig(**{**base.to_dict(), "codebook_size": CODEBOOK, "num_filters": 2,
                                        "num_lstm_layers": 1})).eval()


def randomize_codec_(codec: EncodecModel, seed: int) -> None:
    """Rescaled weights and random codebooks, so that the audio depends on the codes."""
    rescale_(codec, seed + 200)
    g = torch.Generator().manual_seed(seed + 300)
    with torch.no_grad():
        for name, buf in codec.named_buffers():
            if name.endswith("codebook.embed"):
                buf.copy_(torch.randn(buf.shape, generator=g))


def build(stereo: bool, seed: int) -> MusicgenForConditionalGeneration:
    torch.manual_seed(seed)
    t5 = T5EncoderModel.from_pretrained(T5_DIR).eval()
    codec = tiny_codec()
    k = 8 if stereo else 4
    dec_cfg = MusicgenDecoderConfig(vocab_size=CODEBOOK, max_position_embeddings=256, num_hidden_layers=2, ffn_dim=128,
                                    num_attention_heads=4, hidden_size=32, num_codebooks=k,
                                    audio_channels=2 if stereo else 1, pad_token_id=CODEBOOK, bos_token_id=CODEBOOK,
                                    dropout=0.0)
    decoder = MusicgenForCausalLM(dec_cfg)
    config = MusicgenConfig(text_encoder=t5.config, audio_encoder=codec.config, decoder=dec_cfg)
    model = MusicgenForConditionalGeneration(config=config, text_encoder=t5, audio_encoder=codec, decoder=decoder)
    rescale_(model.decoder, seed)
    rescale_(model.enc_to_dec_proj, seed + 100)
    randomize_codec_(model.audio_encoder, seed)
    model.generation_config = GenerationConfig(decoder_start_token_id=CODEBOOK, pad_token_id=CODEBOOK,
                                               bos_token_id=CODEBOOK, do_sample=True, top_k=250, guidance_scale=3.0,
                                               max_length=256)
    return model.eval()


@torch.no_grad()
def reference(model, tokenizer, prompts: list[str], channel_codebooks: int, **inputs_extra) -> dict:
    """transformers' greedy generate with guidance 3.0; the codes are captured where it decodes them.
    ``inputs_extra``: more inputs of ``generate`` (a melody model's ``input_features``)."""
    captured = []
    decode = model.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        captured.append(codes.clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    try:
        inputs = tokenizer(prompts, padding=True, return_tensors="pt")
        max_new = FRAMES + channel_codebooks - 1
        audio = model.generate(**inputs, **inputs_extra, do_sample=False, guidance_scale=3.0, max_new_tokens=max_new)
    finally:
        model.audio_encoder.decode = decode
    codes = captured[0][0]  # [B, K, T]
    if len(captured) == 2:  # stereo: the left codebooks then the right ones were decoded; interleave them again
        codes = torch.stack([captured[0][0], captured[1][0]], dim=2).flatten(1, 2)
    return {"tokens": codes, "max_new_tokens": max_new, "audio_head": audio[..., :AUDIO_SAMPLES].clone()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(T5_DIR)
    ref: dict = {"prompts": PROMPTS, "frames": FRAMES, "guidance_scale": 3.0, "frame_rate": 50}
    for name, stereo, seed in (("musicgen-hf-tiny", False, 0), ("musicgen-stereo-hf-tiny", True, 1)):
        build(stereo, seed).save_pretrained(OUT / name)
        tokenizer.save_pretrained(OUT / name)
        # the reference is the model as its users load it (built in memory, its attention is not yet configured)
        model = MusicgenForConditionalGeneration.from_pretrained(OUT / name).eval()
        kc = 4
        ref[name] = {"batch": reference(model, tokenizer, PROMPTS, kc), "single": reference(model, tokenizer,
                                                                                           PROMPTS[:1], kc)}
        if not stereo:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none",
                              init_lora_weights=False)
            torch.manual_seed(seed + 7)
            peft_model = get_peft_model(model, lora)
            with torch.no_grad():  # make the adapter matter: B=0 would be a no-op, tiny A, B barely move logits
                for n, p in peft_model.named_parameters():
                    if "lora_" in n:
                        p.mul_(0.5 / p.abs().mean().clamp_min(1e-6) / math.sqrt(p.shape[-1]))
            peft_model.save_pretrained(OUT / f"{name}-lora")
            from peft import PeftModel

            base = MusicgenForConditionalGeneration.from_pretrained(OUT / name).eval()
            inner = PeftModel.from_pretrained(base, OUT / f"{name}-lora").base_model.model  # adapter not merged
            ref[f"{name}-lora"] = {"batch": reference(inner, tokenizer, PROMPTS, kc),
                                   "single": reference(inner, tokenizer, PROMPTS[:1], kc)}
    torch.save(ref, OUT / "reference.pt")
    for key, value in ref.items():
        if isinstance(value, dict):
            print(key, {k: tuple(v["tokens"].shape) for k, v in value.items()})


if __name__ == "__main__":
    main()
