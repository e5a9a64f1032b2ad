"""soundry's CPU linear kernel for decode steps: fp32 ``x W^T + b`` for a few rows, built at run time.

A decode step multiplies 2 rows per request (the conditioned and the guidance branch) by every weight
matrix once, so at batch 1 it is bound by how fast the weights stream from memory, plus a fixed cost
per call. oneDNN's inner product (``soundry.models.audiocraft.lm.packed``) streams ~18-22 GB/s at 2
rows on this project's 2-core CPUs and costs ~17 us a call even on tiny weights; a plain loop that
reads each weight block once and keeps the rows' sums in vector registers (``rows_kernel.cpp``)
streams a step's weights 1.5-1.7x faster at 1-2 rows (~31 GB/s, about what this memory gives a plain
sum), 1.2-1.3x at 4-8 and ties from 16 (``python bench/rows_kernel.py`` prints both, and
``bench/end_to_end.py`` the whole clip). No library kernel found does this: MKL's GEMM is slower at
2 rows (5-10 GB/s) and its packed GEMM too, inductor's GEMM template did not beat oneDNN (bench/RESULTS.md,
issue 14), so the kernel is ours — ~60 lines of C++.

Every output is summed in one fixed order whatever the number of rows in the call (the C++ file
says how), so a row's result never depends on what shares its batch.

Built with torch's extension builder for the host CPU (``-march=native``) the first time a process
needs it — ~10-30 s once per machine, then loaded from the cache in ``SOUNDRY_KERNEL_CACHE``
(default ``~/.cache/soundry/kernels``), keyed by the source, torch's version and the CPU. Without a
C++ compiler, or if the build fails, ``available()`` is False with the reason logged once, and the
LM keeps oneDNN's packed weights. ``cpu_linear = "onednn"`` (``SOUNDRY_CPU_LINEAR``; ``load_model(packed="onednn")``)
skips it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import shutil
import threading
from pathlib import Path

import torch
from torch import nn

from soundry.models.audiocraft.lm.packed import replace_linears_

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("rows_kernel.cpp")
BLOCK = 16  # output features per weight block (the C++ kBlock)
MODES = ("auto", "onednn")
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "error": str
_fake_registered = False  # torch.library allows one fake implementation per op and process


def cache_dir() -> Path:
    """Where built kernels are kept: ``SOUNDRY_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/soundry/kernels``."""
    if os.environ.get("SOUNDRY_KERNEL_CACHE"):
        return Path(os.environ["SOUNDRY_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "soundry" / "kernels"


def _cpu_signature() -> str:
    """The CPU's model name and flags: a build with -march=native runs only where they match."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return "".join(lines)


def _build_name() -> str:
    key = "\n".join([SOURCE.read_text(), torch.__version__, " ".join(FLAGS), _cpu_signature()])
    return "soundry_rows_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def available(mode: str = "auto") -> bool:
    """Whether the kernel runs in this process (building or loading it on the first call); False for
    ``mode == "onednn"``, off x86-64 Linux, or when it cannot be built (the reason logged once)."""
    if mode not in MODES:
        raise ValueError(f"unknown cpu_linear {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "onednn":
        return False
    with _lock:
        if "ok" not in _state:
            _state["ok"], _state["error"] = _load()
            if not _state["ok"]:
                log.warning("soundry's CPU linear kernel is not available (%s); using oneDNN's", _state["error"])
    return bool(_state["ok"])


def _load() -> tuple[bool, str]:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False, f"built for x86-64 Linux only, not {platform.system()} {platform.machine()}"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return False, "no C++ compiler (install g++)"
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # torch's builder runs `ninja` from PATH; the pip package's may not be on it
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            return False, "no ninja (pip install ninja)"
    name = _build_name()
    build = cache_dir() / name
    try:
        build.mkdir(parents=True, exist_ok=True)
        # One builder per machine at a time, under a lock that dies with its process: torch's own lock file
        # (``lock`` in the build folder) outlives a builder killed mid-build, and every later process would wait
        # on it forever — so it is removed here, where no one else can be building.
        with open(build.parent / f"{name}.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            (build / "lock").unlink(missing_ok=True)
            try:
                _build(cpp_extension, name, build)
            except Exception:  # a half-written build left by a killed builder: start it afresh, once
                shutil.rmtree(build, ignore_errors=True)
                build.mkdir(parents=True, exist_ok=True)
                _build(cpp_extension, name, build)
    except Exception as exc:  # no ninja, a compiler error, a read-only cache: keep oneDNN
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    _register_fake()
    return True, ""


def _build(cpp_extension, name: str, build: Path) -> None:
    # built from a copy inside the build folder: ninja's rules name the source's path, so another checkout or
    # install of the same source finds the build up to date instead of compiling it again
    source = build / SOURCE.name
    if not source.is_file() or source.read_text() != SOURCE.read_text():
        shutil.copyfile(SOURCE, source)
    if not (build / f"{name}.so").exists():
        log.info("building soundry's CPU linear kernel in %s (once per machine, ~10-30 s)", build)
    cpp_extension.load(name=name, sources=[str(source)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                       build_directory=str(build), is_python_module=False, verbose=False)


def _register_fake() -> None:
    """The op's output shape for torch.compile (the compiled decode step calls it as an external kernel);
    once per process."""
    global _fake_registered
    if _fake_registered:
        return

    @torch.library.register_fake("soundry::rows_linear")
    def _(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0] * BLOCK))

    _fake_registered = True


def block_weight(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] → [N / 16, K, 16]: each block of 16 output features' weights contiguous."""
    n, k = weight.shape
    return weight.reshape(n // BLOCK, BLOCK, k).transpose(1, 2).contiguous()


class RowsLinear(nn.Module):
    """``nn.Linear`` forward (fp32, CPU) through ``soundry::rows_linear`` on a blocked weight (a buffer)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("blocked_weight", block_weight(linear.weight.detach()), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.soundry.rows_linear(x, self.blocked_weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def fits(linear: nn.Linear) -> bool:
    weight = linear.weight
    return weight.dtype == torch.float32 and weight.device.type == "cpu" and linear.out_features % BLOCK == 0


def use_rows_kernel_(module: nn.Module) -> int:
    """Replace every fitting ``nn.Linear`` inside ``module`` (fp32, CPU, a multiple of 16 outputs) with a
    ``RowsLinear``, in place; returns how many. Call only when ``available()``."""
    return replace_linears_(module, RowsLinear, fits)


def uses_rows_kernel(module: nn.Module) -> bool:
    return any(isinstance(m, RowsLinear) for m in module.modules())
