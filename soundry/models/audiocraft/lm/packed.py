"""The LM's linear layers with their weights prepacked for oneDNN: the CPU layout for fp32 and bf16.

A decode step multiplies a handful of rows (2 per request: the text-conditioned branch and the
guidance branch) by every weight matrix once, so it is bound by how fast the kernel streams the
weights. At these row counts the plain ``F.linear`` (MKL GEMM on a row-major ``[out, in]`` weight)
streams ~8-10 GB/s on this project's 2-core CPUs, while oneDNN's inner product on a weight reordered
once into its blocked layout streams ~20-23 GB/s (measured: ``python bench/engine.py``, and the
per-layer figures in bench/RESULTS.md). Same math, float32 accumulation; only the summation order
differs, so results move by float32 rounding (~1e-6 relative).

Why private ops: PyTorch exposes oneDNN's prepacked linear only as ``torch.ops.mkldnn`` ops
(``_reorder_linear_weight`` / ``_linear_pointwise``), the ones inductor's own freezing pass emits for
CPU linears; the public ``torch.utils.mkldnn.to_mkldnn`` converts every input and output to the
opaque mkldnn layout and measured ~35 % slower at 16 rows. ``can_pack`` checks that the ops exist
and give the plain result, so a torch without them (or a CPU oneDNN rejects) keeps ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
ROWS_HINT = 2  # rows of a batch-1 step with guidance: the layout oneDNN picks is tuned for it


class PackedLinear(nn.Module):
    """``nn.Linear`` forward on a oneDNN-reordered weight (kept as a buffer, not a parameter)."""

    def __init__(self, linear: nn.Linear, rows_hint: int = ROWS_HINT):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(w, rows_hint), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether this torch and CPU run the packed linear for ``dtype``, with the plain result."""
    if torch.device(device).type != "cpu" or dtype not in PACKABLE_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        lin = nn.Linear(64, 48, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(48, 64, generator=g))
            x = torch.randn(3, 1, 64, generator=g, dtype=dtype)
            return torch.allclose(PackedLinear(lin)(x).float(), lin(x).float(), rtol=1e-2, atol=1e-2)
    except (RuntimeError, AttributeError):
        return False


def replace_linears_(module: nn.Module, make: Callable[[nn.Linear], nn.Module],
                     fits: Callable[[nn.Linear], bool] = lambda _linear: True) -> int:
    """Replace every ``nn.Linear`` inside ``module`` that ``fits`` with ``make(linear)``, in place; returns how
    many were replaced. The plain weights are released as it goes."""
    replaced = 0
    # Parents only: a list holding the Linears themselves would keep every plain weight alive until
    # the end, doubling the peak memory of a load.
    parents = [m for m in module.modules() if type(m) is not nn.Linear]
    for parent in parents:
        for name in [n for n, c in parent.named_children() if type(c) is nn.Linear and fits(c)]:
            setattr(parent, name, make(getattr(parent, name)))
            replaced += 1
    return replaced


def pack_linears_(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` with a ``PackedLinear`` (in place, on the CPU,
    fp32 or bf16 weights); returns how many were replaced."""
    return replace_linears_(module, PackedLinear)


def is_packed(module: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in module.modules())
