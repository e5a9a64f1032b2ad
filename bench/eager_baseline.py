"""A straightforward eager decoder in the style of the reference implementation, for comparison.

B clips with their guidance rows (2B rows), the text's cross-attention keys/values recomputed from
the condition at every step, the self-attention cache grown by concatenation, the delay pattern
applied to a Python-managed sequence, plain ``nn.Linear`` weights — what audiocraft's
``LMModel.generate`` does per step. It shares the weights of a ``TransformerLM`` (give it one
loaded with ``packed=False``) so both sides run the same model.
"""

from __future__ import annotations

import torch

from soundry.models.audiocraft.lm.transformer import TransformerLM, sin_embedding


class EagerDecoder:
    def __init__(self, lm: TransformerLM, top_k: int = 250, cfg_coef: float = 3.0):
        self.lm, self.cfg = lm, lm.cfg
        self.top_k, self.cfg_coef = top_k, cfg_coef

    def _attend(self, q, k, v, heads):
        R, S, D = q.shape
        sh = lambda t: t.view(R, -1, heads, D // heads).transpose(1, 2)  # noqa: E731
        q, k, v = sh(q), sh(k), sh(v)
        w = torch.softmax(q @ k.transpose(-1, -2) / (D // heads) ** 0.5, dim=-1)
        return (w @ v).transpose(1, 2).reshape(R, S, D)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: int, cond: torch.Tensor, past: list) -> torch.Tensor:
        """tokens [2B, K, 1] at ``position`` (rows: B conditional, then B guidance); cond [2B, L, D];
        past: per-layer [k, v] grown in place. Returns the sampled tokens [B, K]."""
        lm, heads = self.lm, self.cfg.num_heads
        x = lm.embed(tokens)
        pos = torch.full((tokens.shape[0], 1), position, dtype=torch.long)
        x = x + self.cfg.positional_scale * sin_embedding(pos, self.cfg.dim, self.cfg.max_period, x.dtype)
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
        logits = lm.logits(x)[:, :, -1].float()  # [2B, K, card]
        B = logits.shape[0] // 2
        guided = logits[B:] + (logits[:B] - logits[B:]) * self.cfg_coef
        top = torch.topk(torch.softmax(guided, dim=-1), self.top_k, dim=-1)
        probs = top.values / top.values.sum(-1, keepdim=True)
        choice = torch.multinomial(probs.view(-1, self.top_k), 1).view(B, -1, 1)
        return top.indices.gather(-1, choice)[..., 0]  # [B, K]

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, frames: int) -> torch.Tensor:
        """cond [2B, L, D] (B conditional rows, then B guidance rows) → codes [B, K, frames], with
        the delay pattern (codebook k lags k steps; the special token fills the gaps)."""
        K, special, delays = self.cfg.n_q, self.cfg.card, self.cfg.delays
        B = cond.shape[0] // 2
        codes = torch.full((B, K, frames), special, dtype=torch.long)
        past: list = [None] * len(self.lm.layers)
        for s in range(frames + max(delays)):
            inp = torch.full((B, K), special, dtype=torch.long)
            for k, d in enumerate(delays):
                if 0 <= s - 1 - d < frames:
                    inp[:, k] = codes[:, k, s - 1 - d]
            new = self.step(inp.repeat(2, 1)[:, :, None], s, cond, past)
            for k, d in enumerate(delays):
                if 0 <= s - d < frames:
                    codes[:, k, s - d] = new[:, k]
        return codes

    def run(self, steps: int, cond: torch.Tensor) -> None:
        """``steps`` decode steps for the clips of ``cond`` (the decode-speed benchmark)."""
        self.generate(cond, steps - max(self.cfg.delays))
