"""Text conditioning: T5 encoder (transformers) + the checkpoint's output projection.

Semantics of audiocraft's ``T5Conditioner``: empty strings are fully masked; the embedding is
multiplied by the mask, so masked positions are zero vectors.

The encoder never sees more than ``max_tokens`` tokens of a text (the tokenizer truncates, keeping
the beginning and the end-of-sequence token): this bounds the work and memory one request can ask
for, whatever the API's character limit. audiocraft does not truncate; prompts within the limit
are conditioned identically.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from soundry.models.transfer import to_device

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
        return {k: to_device(torch.from_numpy(v).long(), self.device)
                for k, v in self._host_tokens(texts, lengths).items()}

    def _host_tokens(self, texts: list[str], lengths: list[int] | None) -> dict[str, np.ndarray]:
        inputs = self.tokenizer(texts, return_tensors="np", padding=True, truncation=True,
                                max_length=self.max_tokens)
        mask = inputs["attention_mask"]
        for i, text in enumerate(texts):
            if text == "":
                mask[i, :] = 0
        if lengths is not None:
            lengths[:] = mask.sum(axis=-1).tolist()
        return dict(inputs)

    def _encode(self, texts: list[str], lengths: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5's last hidden state and the mask on the device. T5 gets the mask already in 4D, built on the
        host: from a 2D mask, transformers checks ``mask.all()`` on the device (a host sync per admission)."""
        host = self._host_tokens(texts, lengths)
        keep = host["attention_mask"][:, None, None, :].astype(bool)
        if self.t5.config._attn_implementation == "eager":  # additive, as transformers makes it for eager
            keep = np.where(keep, 0.0, torch.finfo(self.t5.dtype).min)
            mask4d = to_device(torch.from_numpy(keep).to(self.t5.dtype), self.device)
        else:  # sdpa and the others take the boolean mask (True: attend)
            mask4d = to_device(torch.from_numpy(keep), self.device)
        ids = to_device(torch.from_numpy(host["input_ids"]).long(), self.device)
        hidden = self.t5(input_ids=ids, attention_mask=mask4d).last_hidden_state
        return hidden, to_device(torch.from_numpy(host["attention_mask"]).long(), self.device)

    @torch.no_grad()
    def forward(self, texts: list[str], lengths: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """texts → (embeddings [B, L, D] with masked positions zeroed, mask [B, L]); ``lengths`` as in
        ``tokenize``."""
        hidden, mask = self._encode(texts, lengths)
        emb = self.output_proj(hidden.to(self.output_proj.weight))
        return emb * mask.unsqueeze(-1).to(emb), mask

    def t5_hidden(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self._encode(texts)[0]
