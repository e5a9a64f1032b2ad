"""Preallocated key/value cache: self-attention K/V per row and position, and the text's
cross-attention K/V per row, computed once at admission. Rows are reused across requests.

Each layer's K and V are tensors of their own (not views of one [layers, ...] tensor): a compiled
step writes a step's keys in place into its inputs, whereas a write into a view of a larger input
makes inductor copy the whole cache around every step (measured: ~8 ms a step at dim 512)."""

from __future__ import annotations

import torch

from soundry.models.audiocraft.lm.transformer import TransformerLM


class KVCache:
    """Per layer, K/V tensors [rows, heads, positions, head_dim]; nothing is concatenated per step."""

    def __init__(self, lm: TransformerLM, max_rows: int, max_len: int, max_cond_len: int = 64,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        cfg = lm.cfg
        p = next(lm.parameters())
        self.dtype = dtype or p.dtype
        self.device = torch.device(device) if device is not None else p.device
        self.lm = lm
        self.layers, self.heads, self.head_dim = cfg.num_layers, cfg.num_heads, cfg.dim // cfg.num_heads
        self.max_rows, self.max_len = max_rows, max_len
        self.k = self._zeros(max_len)
        self.v = self._zeros(max_len)
        self.base_cond_len = max_cond_len
        self.version = 0  # +1 whenever the cross-attention tensors are reallocated (captured graphs go stale)
        self._alloc_cross(max_cond_len)
        self.cond_lens = [0] * max_rows  # condition length stored in each row (0: free)
        self.cross_len = 1  # keys a step attends to: the longest condition of an occupied row
        # On the CPU, the positional term of every position the cache holds, [max_len, dim], computed once:
        # an eager step looks its rows' terms up instead of recomputing the sinusoid (~10 small ops a step,
        # the same values: TransformerLM.position_terms is elementwise). Left out on a GPU (nothing to gain
        # under CUDA graphs) and under torch.compile (which fuses the sinusoid anyway).
        self.position_table = None
        if self.device.type == "cpu":
            emb = lm.emb[0].weight
            with torch.no_grad():
                self.position_table = lm.position_terms(torch.arange(max_len, device=self.device),
                                                        lm.residual_dtype or emb.dtype)

    def _zeros(self, length: int, layers: int | None = None) -> list[torch.Tensor]:
        shape = (self.max_rows, self.heads, length, self.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=self.device)
                for _ in range(self.layers if layers is None else layers)]

    def tensors(self) -> list[torch.Tensor]:
        """Every K/V tensor (self-attention, then cross-attention), each [rows, heads, length, head_dim]."""
        return [*self.k, *self.v, *self.ck, *self.cv]

    def _alloc_cross(self, length: int) -> None:
        """(Re)allocate the cross-attention K/V for conditions up to ``length`` tokens, keeping contents."""
        cross_layers = self.layers if self.lm.cfg.cross_attention else 0  # a melody model has none
        ck, cv = self._zeros(length, cross_layers), self._zeros(length, cross_layers)
        mask = torch.zeros(self.max_rows, length, dtype=torch.bool, device=self.device)
        if hasattr(self, "ck"):
            n = min(length, self.max_cond_len)
            for new, old in zip(ck + cv, self.ck + self.cv, strict=True):
                new[:, :, :n] = old[:, :, :n]
            mask[:, :n] = self.cross_mask[:, :n]
        self.ck, self.cv, self.cross_mask = ck, cv, mask
        if cross_layers:  # without cross-attention no step reads these (the mask only feeds cross-attention)
            self.version += 1

    @property
    def max_cond_len(self) -> int:
        return self.cross_mask.shape[1]

    def self_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer], self.v[layer]

    def cross_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ck[layer], self.cv[layer]

    def set_condition(self, rows: slice, cond: torch.Tensor, valid: torch.Tensor) -> None:
        """Store the cross-attention K/V of conditions [R, L, D] for ``rows``; ``valid`` [R, L] marks
        the keys each row attends to (at least one per row)."""
        L = cond.shape[1]
        if L > self.max_cond_len:  # a long prompt: grow once, rarely
            self._alloc_cross(max(L, 2 * self.max_cond_len))
        for i, (k, v) in enumerate(self.lm.cross_kv(cond.to(self.dtype))):
            self.ck[i][rows, :, :L] = k
            self.cv[i][rows, :, :L] = v
        self.cross_mask[rows] = False
        self.cross_mask[rows, :L] = valid
        self.cond_lens[rows] = [L] * len(self.cond_lens[rows])
        self.cross_len = max(self.cross_len, L)

    def move(self, src: slice, dst: slice) -> None:
        """Copy rows ``src`` onto rows ``dst`` (compaction after a request leaves)."""
        for t in self.tensors():
            t[dst] = t[src]
        self.cross_mask[dst] = self.cross_mask[src]
        self.cond_lens[dst] = self.cond_lens[src]

    def release(self, rows: slice) -> None:
        """Mark ``rows`` free: the cross-attention length shrinks back to the longest condition still
        held, so one long prompt costs every later step only while its request is in the batch."""
        self.cond_lens[rows] = [0] * len(self.cond_lens[rows])
        self.cross_len = max(1, max(self.cond_lens))
        if self.cross_len <= self.base_cond_len < self.max_cond_len:  # the long one left: give the memory back
            self._alloc_cross(self.base_cond_len)

    def nbytes_per_position(self) -> int:
        return 2 * self.layers * self.heads * self.head_dim * self.k[0].element_size()
