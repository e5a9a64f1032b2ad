#!/usr/bin/env bash
# The GPU session of issue 24: one device call of under 10 minutes, most bugs first. NOT YET RUN ON A GPU.
# From the repo root:  bash bench/gpu_check.sh      (logs to $OUT, or ./gpu-logs)
# The GPU image has torch, transformers and pytest but not soundfile/soxr: copy the shared kit in first
# (cp -r ../shared/gpu-kit .gpu, carried with the call) so its wheels install here; no registry is reached.
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SOUNDRY_TEST_DEVICE=cuda
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/site \
    .gpu/wheels/*.whl || exit 1
  export PYTHONPATH=.:.gpu/site
else
  export PYTHONPATH=.
fi
nvidia-smi -L; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# --noconftest: tests/conftest.py imports the web stack, which the GPU image lacks; tests/helpers_models.py
# imports tests/device.py, which sends the tests' model loads to CUDA (SOUNDRY_TEST_PRECISION, default fp32).
PYTEST="python3 -m pytest --noconftest -p no:cacheprovider -q -rfE"

# 1. The engine's tests on CUDA, fp32 with TF32 off (graph capture at every Engine start, stale graphs,
#    continuous batching, streaming on the codec stream, continuation, parity to the goldens, host syncs,
#    the decode options' equal tokens, the stand-in tests of the CUDA-only code).
timeout 170 $PYTEST tests/test_engine_batching.py tests/test_streaming_engine.py tests/test_continuation.py \
  tests/test_reference_parity.py tests/test_engine_host_syncs.py tests/test_decode_options.py \
  tests/test_gpu_path.py 2>&1 | tee "$OUT/1_pytest_fp32.log"

# 2. Targeted: stale graphs, SDPA backends on the engine's strides (masked and unmasked), a seed's
#    tokens on CPU vs CUDA with rng=counter, real-size KV cache and graphs vs dynamic steps/s.
timeout 150 python3 bench/gpu_checks.py 2>&1 | tee "$OUT/2_checks.log"

# 3. The engine bench on the audiogen-medium shape, bf16 as served: graphs on, then off (the eager
#    static/dynamic step), each beside the eager reference-style baseline.
timeout 120 python3 bench/engine.py --shape audiogen-medium --device cuda --batch-sizes 1,16,64 \
  --plain only --repeats 2 2>&1 | tee "$OUT/3_bench_graphs.log"
timeout 70 python3 bench/engine.py --shape audiogen-medium --device cuda --batch-sizes 1,16,64 \
  --plain only --repeats 2 --static off 2>&1 | tee "$OUT/4_bench_no_graphs.log"

# 4. bf16 (what precision=auto serves): the real audiogen-medium shape through the Engine, the batching
#    tests and mixed precision (token mismatches here can be bf16 batch variance; NaN, crashes and
#    capture failures are bugs).
SOUNDRY_TEST_PRECISION=bf16 timeout 80 $PYTEST tests/test_real_shape.py tests/test_engine_batching.py \
  tests/test_mixed_precision.py 2>&1 | tee "$OUT/5_pytest_bf16.log"
