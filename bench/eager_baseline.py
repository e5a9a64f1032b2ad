"""A straightforward eager decoder in the style of the reference implementation, for comparison.

Batch 1 with its guidance pair (2 rows), the text's cross-attention keys/values recomputed from the
condition at every step, the self-attention cache grown by concatenation, the delay pattern held as
a Python-managed sequence — what audiocraft's ``LMModel.generate`` does per step. It shares the
weights of a ``TransformerLM`` so both run the same model.
"""

from __future__ import annotations

import torch

from soundry.models.lm import TransformerLM, sin_embedding


class EagerDecoder:
    def __init__(self, lm: TransformerLM):
        self.lm = lm
        self.cfg = lm.cfg

    def _attend(self, q, k, v, heads):
        R, S, D = q.shape
        sh = lambda t: t.view(R, -1, heads, D // heads).transpose(1, 2)  # noqa: E731
        q, k, v = sh(q), sh(k), sh(v)
        w = torch.softmax(q @ k.transpose(-1, -2) / (D // heads) ** 0.5, dim=-1)
        return (w @ v).transpose(1, 2).reshape(R, S, D)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: int, cond: torch.Tensor, past: list) -> torch.Tensor:
        """tokens [2, K, 1] at ``position``; cond [2, L, D]; past: per-layer [k, v] grown in place."""
        lm, heads = self.lm, self.cfg.num_heads
        x = lm.embed(tokens)
        pos = torch.full((2, 1), position, dtype=torch.long)
        x = x + sin_embedding(pos, self.cfg.dim, self.cfg.max_period, x.dtype)
        for i, layer in enumerate(lm.layers):
            h = layer.norm1(x)
            q, k, v = layer.self_attn.qkv_proj(h).chunk(3, dim=-1)
            if past[i] is None:
                past[i] = [k, v]
            else:
                past[i] = [torch.cat([past[i][0], k], dim=1), torch.cat([past[i][1], v], dim=1)]
            x = x + layer.self_attn.out_proj(self._attend(q, past[i][0], past[i][1], heads))
            h = layer.norm_cross(x)
            ca = layer.cross_attention
            ck, cv = ca.kv_proj(cond).chunk(2, dim=-1)  # recomputed every step, as the reference does
            x = x + ca.out_proj(self._attend(ca.q_proj(h), ck, cv, heads))
            x = x + layer.feed_forward(layer.norm2(x))
        logits = lm.logits(x)[:, :, -1].float()
        guided = logits[1] + (logits[0] - logits[1]) * 3.0
        probs = torch.softmax(guided, dim=-1)
        top = torch.topk(probs, 250, dim=-1)
        choice = torch.multinomial(top.values / top.values.sum(-1, keepdim=True), 1)
        return top.indices.gather(-1, choice)  # [K, 1]

    def run(self, steps: int, cond: torch.Tensor) -> None:
        K = self.cfg.n_q
        seq = torch.full((2, K, 1), self.cfg.card, dtype=torch.long)
        past: list = [None] * len(self.lm.layers)
        for s in range(steps):
            nxt = self.step(seq[:, :, -1:], s, cond, past)
            seq = torch.cat([seq, nxt[None].expand(2, K, 1)], dim=-1)
