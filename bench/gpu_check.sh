#!/usr/bin/env bash
# The GPU session of issues 24 and 31: one device call of under 10 minutes, most bugs first. NOT YET RUN ON A GPU.
# From the repo root:  bash bench/gpu_check.sh      (logs to $OUT, or ./gpu-logs)
# The GPU image has torch, transformers and pytest but not soundfile/soxr: copy the shared kit in first
# (cp -r ../shared/gpu-kit .gpu, carried with the call) so its wheels install here; no registry is reached.
# Stage timeouts add up to 480 s, leaving ~2 minutes of a 600 s call to the install, nvidia-smi and imports.
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
# -o addopts=: pyproject's addopts run pytest-xdist's workers, which the GPU image lacks (and one GPU runs serially).
PYTEST="python3 -m pytest --noconftest -o addopts= -p no:cacheprovider -q -rfE"

# 1. (40 s) Re-capture after a full-window job and a long prompt, in a process of its own: before issue 31's
#    fix a warm-up wrote past the KV cache, a device-side assert that leaves the CUDA context dead.
timeout 40 python3 bench/gpu_checks.py recapture 2>&1 | tee "$OUT/1_recapture.log"

# 2. (110 s) The engine's tests on CUDA, fp32 with TF32 off (graph capture at every Engine start, stale
#    graphs, continuous batching, streaming on the codec stream, continuation, parity to the goldens, host
#    syncs, the decode options' equal tokens, the stand-in tests of the CUDA-only code).
timeout 110 $PYTEST tests/test_engine_batching.py tests/test_streaming_engine.py tests/test_continuation.py \
  tests/test_reference_parity.py tests/test_engine_host_syncs.py tests/test_decode_options.py \
  tests/test_gpu_path.py tests/test_gpu_path_ii.py 2>&1 | tee "$OUT/2_pytest_fp32.log"

# 3. (70 s) Issue 31: graph replays vs dynamic steps under load after a long prompt; set_sync_debug_mode("error")
#    around an engine pass; engine steps/s alone and beside a MultiBand Diffusion decode on another thread.
timeout 70 python3 bench/gpu_checks.py replays syncs mbd 2>&1 | tee "$OUT/3_issue31.log"

# 4. (50 s) Stale graphs (poisoned old cache), SDPA backends on the engine's strides, a seed's tokens on CPU
#    vs CUDA with rng=counter.
timeout 50 python3 bench/gpu_checks.py stale sdpa seed 2>&1 | tee "$OUT/4_checks.log"

# 5. (40 s) Issue 31 item 4: musicgen-large bf16, 16 slots, one graph per key-length bucket (the count checked):
#    replay ms/step per bucket against the whole-cache graph at the same positions, and the KV bytes each reads.
timeout 40 python3 bench/gpu_checks.py keys 2>&1 | tee "$OUT/5_keys.log"

# 6. (90 s) Real sizes, bf16 as served: audiogen-medium and musicgen-large at the slot count fit_slots allows
#    (at most 64), the graph count (batch x key buckets) and capture time, graphs vs dynamic steps/s, then the
#    batch filled with a 256-token prompt.
timeout 90 python3 bench/gpu_checks.py scale 2>&1 | tee "$OUT/6_scale.log"

# 7. (40 s) The engine bench on the audiogen-medium shape, bf16, graphs on, beside the eager baseline.
timeout 40 python3 bench/engine.py --shape audiogen-medium --device cuda --batch-sizes 1,16,64 \
  --plain only --repeats 2 2>&1 | tee "$OUT/7_bench_graphs.log"

# 8. (40 s) bf16 (what precision=auto serves): the real audiogen-medium shape through the Engine, the batching
#    tests and mixed precision (token mismatches here can be bf16 batch variance; NaN, crashes and capture
#    failures are bugs).
SOUNDRY_TEST_PRECISION=bf16 timeout 40 $PYTEST tests/test_real_shape.py tests/test_engine_batching.py \
  tests/test_mixed_precision.py 2>&1 | tee "$OUT/8_pytest_bf16.log"
