"""Teacher-forced logits: what audiocraft's ``compute_predictions`` gives for known codes, for the parity tests
and ``bench/fidelity.py`` (a test tool, kept out of the package)."""

from __future__ import annotations

import torch

from soundry.models.audiocraft.lm.kv_cache import KVCache


@torch.no_grad()
def teacher_logits(model, codes: torch.Tensor, prompts: list[str], chroma: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional-branch logits for given codes [B, K, T], as audiocraft's compute_predictions:
    returns (logits [B, K, T, card] with NaN where the pattern gives no prediction, mask [B, K, T]).
    A melody model reads ``chroma`` [B, chroma_len, n_chroma] (None: silence's) before the codes."""
    B, K, T = codes.shape
    device, lm, delays = model.device, model.lm, torch.tensor(model.cfg.delays, device=model.device)
    emb, _ = model.conditioner(prompts)
    emb = emb.to(device, next(lm.parameters()).dtype)
    prefix = None
    if model.cfg.prepend:
        prefix = torch.stack([model.prefix(torch.stack([e, torch.zeros_like(e)]), None if chroma is None else c)[0]
                              for e, c in zip(emb, chroma if chroma is not None else [None] * B, strict=True)])
    P = 0 if prefix is None else prefix.shape[1]
    cache = KVCache(lm, B, P + T + 1, max_cond_len=emb.shape[1])
    cache.set_condition(slice(0, B), emb, torch.ones(emb.shape[:2], dtype=torch.bool, device=device))
    steps = torch.arange(T + 1, device=device)
    t = steps[None, None, :] - 1 - delays[None, :, None]
    valid = (t >= 0) & (t < T)
    tok = codes.to(device).gather(2, t.clamp(0, T - 1).expand(B, K, -1))
    tok = torch.where(valid, tok, torch.full_like(tok, lm.special_token))
    hidden = lm.forward_cached(tok, torch.zeros(B, dtype=torch.long, device=device), cache, slice(0, B),
                               cache.cross_mask[:B], key_len=P + T + 1, prefix=prefix)[:, P:]
    seq_logits = lm.logits(hidden).float()  # [B, K, T+1, card]
    frames = torch.arange(T, device=device)
    src = frames[None, :] + delays[:, None]  # step predicting (q, t)
    mask = src < T
    idx = src.clamp(max=T - 1)[None, :, :, None].expand(B, K, T, seq_logits.shape[-1])
    logits = seq_logits.gather(2, idx)
    logits = torch.where(mask[None, :, :, None], logits, torch.full_like(logits, float("nan")))
    return logits, mask[None].expand(B, K, T)
