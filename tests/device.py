"""``SOUNDRY_TEST_DEVICE=cuda``: the engine and parity tests load their models on CUDA.

Imported by ``tests/helpers_models.py`` (so also with ``--noconftest``, as on a GPU image without the
web stack): every ``load_model`` that does not ask for int8 (CPU only) goes to the test device, in
``SOUNDRY_TEST_PRECISION`` (default fp32, what the golden files were made in; bf16 is what the
service's ``auto`` serves on a GPU) when it asks for none or ``auto``, with TF32 off so fp32 stays
fp32. Graph captures and capture failures are logged by the engine itself (soundry.engine).
Unset or ``cpu``: nothing changes.
"""

from __future__ import annotations

import os

import torch

TEST_DEVICE = os.environ.get("SOUNDRY_TEST_DEVICE", "cpu").strip().lower() or "cpu"
TEST_PRECISION = os.environ.get("SOUNDRY_TEST_PRECISION", "fp32")


def _redirect_loads() -> None:
    import soundry.models.loader as loader

    if getattr(loader._load_model, "test_device", None):
        return
    original = loader._load_model

    def load_on_test_device(name, device, dtype, quantize, precision, *rest, **kw):
        if quantize or (precision or "").lower() == "int8":
            return original(name, device, dtype, quantize, precision, *rest, **kw)
        if (precision or "auto").lower() == "auto" and dtype is None:
            precision = TEST_PRECISION
        return original(name, TEST_DEVICE, dtype, quantize, precision, *rest, **kw)

    load_on_test_device.test_device = TEST_DEVICE
    loader._load_model = load_on_test_device


if TEST_DEVICE != "cpu":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _redirect_loads()
