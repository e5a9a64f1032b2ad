"""A tiny transformers-format MusicGen-melody checkpoint and what transformers itself generates with it.

transformers' ``MusicgenMelodyFeatureExtractor`` needs torchaudio, which soundry does not depend on: run with a
torchaudio on ``PYTHONPATH`` (its Python code is enough; e.g. ``pip install --no-deps --target /tmp/ta
torchaudio`` and, if its compiled extension does not match the installed torch, delete
``/tmp/ta/torchaudio/lib/*.so``), from the repository root:

    PYTHONPATH=/tmp/ta .venv/bin/python tests/data/make_hf_melody_reference.py

It writes, under tests/data/hf/:
- ``musicgen-melody-hf-tiny/`` and ``musicgen-stereo-melody-hf-tiny/``:
  ``MusicgenMelodyForConditionalGeneration.save_pretrained`` (config.json, generation_config.json,
  model.safetensors) with random weights, the tokenizer's files and the feature extractor's
  preprocessor_config.json: the tiny T5 and EnCodec of make_hf_reference.py, a 2-layer decoder of width 32 over 4
  codebooks (mono) or 8 (stereo, interleaved left/right) of 64 entries (pad / decoder-start token 64), 12 chroma
  bins projected by ``audio_enc_to_dec_proj``, ``chroma_length`` 235 (30 s).
- ``melody_reference.pt``: ``tune`` (a mono synthetic tune at 32 kHz), ``input_features`` (the feature extractor's
  chroma of it, [1, frames, 12]), and per model transformers' own ``generate`` (greedy, ``guidance_scale=3.0``)
  of ``prompts`` padded together as one batch and of ``prompts[0]`` alone, each with the tune as the melody of
  every prompt (``melody``) and without one (``none``): the codes it decodes, ``max_new_tokens``, the first
  samples of the audio.
"""

from __future__ import annotations

import math

import torch
from make_hf_reference import CODEBOOK, FRAMES, OUT, PROMPTS, T5_DIR, randomize_codec_, reference, rescale_, tiny_codec
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyFeatureExtractor,
    MusicgenMelodyForCausalLM,
    MusicgenMelodyForConditionalGeneration,
    T5EncoderModel,
)

MODELS = (("musicgen-melody-hf-tiny", False, 2), ("musicgen-stereo-melody-hf-tiny", True, 3))  # name, stereo, seed
RATE = 32000
NOTES = [220.0, 277.2, 329.6, 440.0, 392.0, 329.6, 293.7, 246.9]  # a quarter second each


def tune() -> torch.Tensor:
    """Two seconds of sine notes with a few harmonics: [N] at ``RATE``."""
    t = torch.arange(RATE // 4) / RATE
    notes = [sum(0.5 ** h * torch.sin(2 * math.pi * f * (h + 1) * t) for h in range(3)) for f in NOTES]
    return (0.3 * torch.cat(notes)).float()


def build(stereo: bool, seed: int) -> MusicgenMelodyForConditionalGeneration:
    torch.manual_seed(seed)
    t5 = T5EncoderModel.from_pretrained(T5_DIR).eval()
    codec = tiny_codec()
    dec_cfg = MusicgenMelodyDecoderConfig(vocab_size=CODEBOOK, max_position_embeddings=512, num_hidden_layers=2,
                                          ffn_dim=128, num_attention_heads=4, hidden_size=32,
                                          num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
                                          pad_token_id=CODEBOOK, bos_token_id=CODEBOOK,
                                          dropout=0.0)
    decoder = MusicgenMelodyForCausalLM(dec_cfg)
    config = MusicgenMelodyConfig(text_encoder=t5.config, audio_encoder=codec.config, decoder=dec_cfg,
                                  num_chroma=12, chroma_length=235)
    model = MusicgenMelodyForConditionalGeneration(config=config, text_encoder=t5, audio_encoder=codec,
                                                   decoder=decoder)
    rescale_(model.decoder, seed)
    rescale_(model.enc_to_dec_proj, seed + 100)
    rescale_(model.audio_enc_to_dec_proj, seed + 400)
    randomize_codec_(model.audio_encoder, seed)
    model.generation_config = GenerationConfig(decoder_start_token_id=CODEBOOK, pad_token_id=CODEBOOK,
                                               bos_token_id=CODEBOOK, do_sample=True, top_k=250, guidance_scale=3.0,
                                               max_length=512)
    return model.eval()


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(T5_DIR)
    features = MusicgenMelodyFeatureExtractor(sampling_rate=RATE)
    wav = tune()
    chroma = features(wav.numpy(), sampling_rate=RATE, return_tensors="pt")["input_features"]
    ref: dict = {"prompts": PROMPTS, "frames": FRAMES, "guidance_scale": 3.0, "frame_rate": 50, "tune": wav,
                 "sample_rate": RATE, "input_features": chroma}
    for name, stereo, seed in MODELS:
        folder = OUT / name
        build(stereo, seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        features.save_pretrained(folder)
        model = MusicgenMelodyForConditionalGeneration.from_pretrained(folder).eval()
        ref[name] = {case: {"melody": reference(model, tokenizer, prompts, 4,
                                                input_features=chroma.expand(len(prompts), -1, -1).contiguous()),
                            "none": reference(model, tokenizer, prompts, 4)}
                     for case, prompts in (("batch", PROMPTS), ("single", PROMPTS[:1]))}
        print(name, {case: {k: tuple(v["tokens"].shape) for k, v in ref[name][case].items()}
                     for case in ("batch", "single")})
    torch.save(ref, OUT / "melody_reference.pt")


if __name__ == "__main__":
    main()
