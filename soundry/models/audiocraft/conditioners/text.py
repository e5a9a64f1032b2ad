"""Text conditioning: T5 encoder (transformers) + the checkpoint's output projection.

Semantics of audiocraft's ``T5Conditioner``: empty strings are fully masked; the embedding is
multiplied by the mask, so masked positions are zero vectors.

The encoder never sees more than ``max_tokens`` tokens of a text (the tokenizer truncates, keeping
the beginning and the end-of-sequence token): this bounds the work and memory one request can ask
for, whatever the API's character limit. audiocraft does not truncate; prompts within the limit
are conditioned identically.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_MAX_TOKENS = 256  # T5 was trained on 512; a 2,000-character prompt is about 500 tokens


class TextConditioner(nn.Module):
    def __init__(self, t5_name_or_path: str, output_dim: int, t5_dim: int | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, tokenizer=None, t5: nn.Module | None = None):
        """``tokenizer`` and ``t5``, when given (a transformers-format checkpoint's own), replace loading
        them from ``t5_name_or_path``."""
        super().__init__()
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 (one word and the end token), not {max_tokens}")
        self.max_tokens = max_tokens
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(t5_name_or_path)
        self.t5 = (t5 if t5 is not None else T5EncoderModel.from_pretrained(t5_name_or_path)).eval()
        t5_dim = t5_dim or self.t5.config.d_model
        self.output_proj = nn.Linear(t5_dim, output_dim)

    @property
    def device(self) -> torch.device:
        return self.output_proj.weight.device

    def tokenize(self, texts: list[str], lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Token ids and attention mask on the device; ``lengths``, if given, receives each text's
        unmasked token count (read on the host, before the copy: no device sync for it later)."""
        inputs = self.tokenizer(texts, return_tensors="np", padding=True, truncation=True,
                                max_length=self.max_tokens)
        mask = inputs["attention_mask"]
        for i, text in enumerate(texts):
            if text == "":
                mask[i, :] = 0
        if lengths is not None:
            lengths[:] = mask.sum(axis=-1).tolist()
        return {k: torch.from_numpy(v).long().to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def forward(self, texts: list[str], lengths: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """texts → (embeddings [B, L, D] with masked positions zeroed, mask [B, L]); ``lengths`` as in
        ``tokenize``."""
        inputs = self.tokenize(texts, lengths)
        hidden = self.t5(**inputs).last_hidden_state
        emb = self.output_proj(hidden.to(self.output_proj.weight))
        mask = inputs["attention_mask"]
        return emb * mask.unsqueeze(-1).to(emb), mask

    def t5_hidden(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.t5(**self.tokenize(texts)).last_hidden_state
