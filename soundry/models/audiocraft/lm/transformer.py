"""The MusicGen/AudioGen transformer LM over K parallel codebooks, written for incremental decoding.

Math follows audiocraft's ``LMModel`` (norm_first layers: self-attention, cross-attention to the
text condition, feed-forward; sinusoidal positions; one embedding and one output head per codebook).
Unlike the reference, every call works on rows of a preallocated KV cache (see
``soundry.models.audiocraft.lm.kv_cache``), so a decode step reads the cache in place and writes one position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from soundry.models.audiocraft.checkpoint import LMConfig

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float, dtype: torch.dtype) -> torch.Tensor:
    """audiocraft's ``create_sin_embedding``: [..., dim] = cat(cos(phase), sin(phase))."""
    half = dim // 2
    positions = positions.to(torch.float32).unsqueeze(-1)
    adim = torch.arange(half, device=positions.device, dtype=torch.float32)
    phase = positions / (torch.full([], max_period, device=positions.device) ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).to(dtype)


def sin_embedding_transformers(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``MusicgenSinusoidalPositionalEmbedding``: the same cat(cos, sin) with the frequencies
    computed as exp(-i·log(10000)/(half-1)), the way the transformers-format checkpoints ran (the two formulas
    differ in float rounding)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.int64).float()
                     * -(math.log(10000) / (half - 1)))
    phase = positions.to(torch.float32).unsqueeze(-1) * freq
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).to(dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q [R, H, S, Dh] over k, v [R, H, T, Dh]; ``mask`` (broadcast to [R, H, S, T]) is
    True where a key counts (or additive, 0 or -inf: ``_additive_mask``). Eagerly this is PyTorch's fused
    kernel. Under ``torch.compile`` (boolean masks only) it is the matmul form: inductor copies the strided
    cache slices into contiguous buffers before calling the fused kernel (~165 us a call at 16 rows, dim 512),
    while it fuses the matmul form's scaling, mask and softmax (~110 us); the whole compiled step ran 1.26x
    against 1.14x (bench/RESULTS.md)."""
    if torch.compiler.is_compiling():
        w = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(w, dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head attention. Self-attention projects q, k, v with one packed linear (``qkv_proj``);
    cross-attention splits it (``q_proj`` for the audio stream, ``kv_proj`` for the text, computed
    once per request). Plain nn.Linear modules, so dynamic int8 quantisation applies to them."""

    def __init__(self, dim: int, num_heads: int, bias: bool, cross: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if cross:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.kv_proj = nn.Linear(dim, 2 * dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        R, S, _ = x.shape
        return x.view(R, S, self.num_heads, self.head_dim).transpose(1, 2)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def q_only(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.q_proj(x))

    def kv_only(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(src).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        R, H, S, Dh = attn.shape
        return self.out_proj(attn.transpose(1, 2).reshape(R, S, H * Dh))


class Layer(nn.Module):
    """One norm_first transformer layer: x += SA(norm1 x); x += CA(norm_cross x, cond); x += FF(norm2 x)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        dim = cfg.dim
        self.self_attn = Attention(dim, cfg.num_heads, cfg.bias_attn)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.linear1 = nn.Linear(dim, cfg.hidden_scale * dim, bias=cfg.bias_ff)
        self.linear2 = nn.Linear(cfg.hidden_scale * dim, dim, bias=cfg.bias_ff)
        self.activation = _ACTIVATIONS[cfg.activation]
        self.has_cross = cfg.cross_attention
        if self.has_cross:
            self.cross_attention = Attention(dim, cfg.num_heads, cfg.bias_attn, cross=True)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))


class TransformerLM(nn.Module):
    """Weights and per-step math of the LM. Parameter names match the release state dict
    (after ``normalize_state_dict``)."""

    # Mixed precision (``soundry.models.audiocraft.lm.precision``): with half-precision weights the residual stream,
    # the LayerNorms and the output heads stay in this dtype (float32), as under audiocraft's autocast.
    # None: everything in the weights' dtype.
    residual_dtype: torch.dtype | None = None

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if not cfg.norm_first:
            raise ValueError("only norm_first transformers (all released MusicGen/AudioGen) are supported")
        self.cfg = cfg
        self.emb = nn.ModuleList([nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q)])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_layers)])
        self.out_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.linears = nn.ModuleList([nn.Linear(cfg.dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.n_q)])
        self.heads: nn.Module | None = None  # the fused output heads (fuse_heads_)

    @property
    def special_token(self) -> int:
        return self.cfg.card if self.cfg.special_token is None else self.cfg.special_token

    # -- the pieces -------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [R, K, S] → [R, S, D] (sum of the K codebook embeddings)."""
        x = self.emb[0](tokens[:, 0])
        for k in range(1, tokens.shape[1]):
            x = x + self.emb[k](tokens[:, k])
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [R, S, D] → logits [R, K, S, card]."""
        h = self.out_norm(hidden)
        if self.heads is not None:  # fuse_heads_: the K heads as one matmul
            R, S, _ = h.shape
            return self.heads(h).view(R, S, self.cfg.n_q, self.cfg.card).transpose(1, 2)
        return torch.stack([lin(h) for lin in self.linears], dim=1)

    def fuse_heads_(self) -> TransformerLM:
        """Replace the K output heads by one linear layer of K × card outputs (one matmul, one weight
        read, instead of K): the same products, so the same logits up to the kernel's summation order.
        ``linears`` is emptied (its weights now live in ``heads``)."""
        if self.heads is None:
            lins = list(self.linears)
            w = torch.cat([lin.weight.detach() for lin in lins])
            b = None if lins[0].bias is None else torch.cat([lin.bias.detach() for lin in lins])
            heads = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                heads.weight.copy_(w)
                if b is not None:
                    heads.bias.copy_(b)
            self.heads = heads
            self.linears = nn.ModuleList()
        return self

    def position_terms(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What the residual stream gets added at ``positions`` [...]: [..., dim] in ``dtype``. Elementwise in
        the position, so a table of ``position_terms(arange(n))`` holds exactly these values (``KVCache``)."""
        if self.cfg.layout == "transformers":  # transformers' sinusoid (its rounding), no scale
            return sin_embedding_transformers(positions, self.cfg.dim, dtype)
        return self.cfg.positional_scale * sin_embedding(positions, self.cfg.dim, self.cfg.max_period, dtype)

    def cross_kv(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of a condition [R, L, D], per layer: ([R,H,L,Dh], [R,H,L,Dh])."""
        return [layer.cross_attention.kv_only(cond) for layer in self.layers] if self.cfg.cross_attention else []

    def forward_cached(self, tokens: torch.Tensor, start: torch.Tensor, cache, rows: slice,
                       cross_mask: torch.Tensor | None, key_len: int, cross_len: int | None = None,
                       self_mask: bool = True, prefix: torch.Tensor | None = None,
                       groups: list[tuple[int, int, int]] | None = None) -> torch.Tensor:
        """Run S new steps for a contiguous block of cache rows.

        tokens [R, K, S]; start [R] the position of the first new step of each row; ``cache`` holds
        per-layer self K/V [Rmax, H, Tmax, Dh] and cross K/V [Rmax, H, Lmax, Dh]; ``rows`` selects
        the block; cross_mask [R, Lmax] marks the valid condition keys; ``key_len`` (a host int, so
        no device sync) is max(start) + S, or more (later keys are masked); ``cross_len`` the condition
        keys to attend over (default the cache's longest condition). ``self_mask=False`` (one step, S = 1,
        with every row at position ``key_len - 1``) attends over all ``key_len`` keys without a mask.
        ``prefix`` [R, P, D]: embeddings read before the tokens (a prepended condition, audiocraft's fuser
        "prepend"): they take positions start .. start + P - 1 and get the positional embedding as tokens do.
        ``groups`` (one step, S = 1): attention runs per group of rows — (rows, self keys, condition keys), the
        rows consecutive from the block's first, each at position keys - 1 — over exactly its own keys, so a row's
        result does not depend on the other rows' lengths (the batch-invariant step: over masked extra keys the
        fused kernel's summation, and so the rounding, changes with the key count).
        Returns hidden [R, S (+ P), D].
        """
        device = tokens.device
        x = self.embed(tokens)
        cd = x.dtype  # what the linear layers take; residual adds promote their outputs back to x's dtype
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        S = x.shape[1]
        steps = torch.arange(S, device=device)
        positions = start[:, None] + steps[None, :]  # [R, S]
        table = None
        if device.type == "cpu" and not torch.compiler.is_compiling():
            table = getattr(cache, "position_table", None)
            if table is not None and table.dtype != x.dtype:  # another precision's cache: computed as before
                table = None
        if table is None:
            x = x + self.position_terms(positions, x.dtype)
        else:  # the same values, looked up (one index op instead of ~10 small ones a step)
            x = x + table[positions]
        keys = torch.arange(key_len, device=device)
        causal = (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1) if self_mask or S > 1 else None
        cmask = None if cross_mask is None else cross_mask[:, None, None, :]
        if device.type == "cpu" and not torch.compiler.is_compiling():
            # scaled_dot_product_attention turns a boolean mask into an additive one on every call (2 x layers
            # calls a step); done once here, exactly as it does it, the kernels get the same inputs
            causal, cmask = _additive_mask(causal, cd), _additive_mask(cmask, cd)
        r_idx = torch.arange(rows.start, rows.stop, device=device)[:, None, None]
        h_idx = torch.arange(self.layers[0].self_attn.num_heads, device=device)[None, :, None]
        p_idx = positions[:, None, :]
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x).to(cd)
            q, k, v = layer.self_attn.qkv(h)
            kc, vc = cache.self_kv(i)
            kc[r_idx, h_idx, p_idx] = k
            vc[r_idx, h_idx, p_idx] = v
            if groups is None:
                attn = attend(q, kc[rows, :, :key_len], vc[rows, :, :key_len], causal)
            else:
                attn = _per_group(groups, 1, q, kc[rows], vc[rows], None)
            x = x + layer.self_attn.output(attn)
            if layer.has_cross:
                h = layer.norm_cross(x).to(cd)
                ck, cv = cache.cross_kv(i)
                lc = cache.cross_len if cross_len is None else cross_len
                qc = layer.cross_attention.q_only(h)
                if groups is None:
                    attn = attend(qc, ck[rows, :, :lc], cv[rows, :, :lc], None if cmask is None else cmask[..., :lc])
                else:
                    attn = _per_group(groups, 2, qc, ck[rows], cv[rows], cmask)
                x = x + layer.cross_attention.output(attn)
            x = x + layer.feed_forward(layer.norm2(x).to(cd))
        return x


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean attention mask as ``scaled_dot_product_attention`` converts it (aten's
    ``convert_boolean_attn_mask``): 0 where a key counts, -inf where not, in the query's dtype."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, torch.scalar_tensor(0.0, dtype=dtype, device=mask.device),
                       torch.scalar_tensor(float("-inf"), dtype=dtype, device=mask.device))


def _per_group(groups: list[tuple[int, int, int]], which: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
    """``attend`` per group of rows over its own first ``group[which]`` keys, concatenated over the rows."""
    out, a = [], 0
    for g in groups:
        b, n = a + g[0], g[which]
        out.append(attend(q[a:b], k[a:b, :, :n], v[a:b, :, :n], None if mask is None else mask[a:b, ..., :n]))
        a = b
    return out[0] if len(out) == 1 else torch.cat(out)


def normalize_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map release keys onto TransformerLM's names: drop the conditioner, 'transformer.' and '.mha',
    and turn packed ``in_proj_*`` into ``qkv_proj`` (self) or ``q_proj`` + ``kv_proj`` (cross)."""
    out = {}
    for key, value in state.items():
        if key.startswith("condition_provider."):
            continue
        key = key.replace("transformer.layers.", "layers.").replace(".mha.", ".")
        if ".in_proj_" in key:
            prefix, kind = key.split(".in_proj_")  # kind: "weight" | "bias"
            if prefix.endswith("cross_attention"):
                dim = value.shape[0] // 3
                out[f"{prefix}.q_proj.{kind}"] = value[:dim]
                out[f"{prefix}.kv_proj.{kind}"] = value[dim:]
            else:
                out[f"{prefix}.qkv_proj.{kind}"] = value
            continue
        out[key] = value
    return out


def init_random_(module: nn.Module, seed: int = 0, scale: float = 1.0) -> None:
    """Random weights for benchmarks and shape tests (std ~ 1/sqrt(fan_in))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (scale / math.sqrt(p.shape[-1])))
