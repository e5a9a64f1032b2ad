"""What MultiBand Diffusion costs against the EnCodec decode of the same codes, on the real models' shapes with
random weights (``soundry.models.audiocraft.codecs.mbd``; audiocraft's ``score/basic`` U-Net as
``grids/diffusion/4_bands_base_32khz``
trains it for MusicGen: hidden 48, depth 4, growth 4, kernel 8, stride 4, 128-dim codec latent; 4 bands, the top
two with the 8-band sample processor; ``facebook/encodec_32khz``'s shape for the codec).

    python bench/mbd.py [--seconds 10] [--repeats 3] [--full] [--threads N] [--device cpu] [--dtype float32]

Times, interleaved run by run at the real length (``--seconds`` of mono audio, 50 frames/s of 4 codebooks): the
EnCodec decode; one U-Net pass; and everything of an MBD decode but its passes (the EnCodec reference decode, the
latent, the noise draws, the band processors, the 32-band re-EQ: ``tokens_to_wav`` with no step). MBD's cost is
then the rest plus 80 passes (audiocraft's 20 steps x 4 bands; the four U-Nets have the same shape). ``--full``
also times whole decodes (for a GPU; on a 2-core CPU a 10 s decode takes tens of minutes). Prints the medians
of wall seconds and of the process's CPU seconds (steadier where other work shares the CPU), MBD / EnCodec and
the CPU flags, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_flags, parse_args  # noqa: E402
from soundry.models.audiocraft.codecs.encodec import HFEncodec  # noqa: E402
from soundry.models.audiocraft.codecs.mbd import DEFAULT_STEPS, DiffusionUNet, MultiBandDiffusion  # noqa: E402

FRAME_RATE, SAMPLE_RATE, N_Q = 50, 32000, 4
UNET = {"hidden": 48, "depth": 4, "res_blocks": 1, "norm_groups": 4, "kernel": 8, "stride": 4, "growth": 4,
        "max_channels": 10_000, "dropout": 0.0, "emb_all_layers": True, "bilstm": False, "codec_dim": 128,
        "transformer": False, "cross_attention": False}
SCHEDULE = {"repartition": "power", "variable_step_batch": True, "beta_t0": 1e-5, "beta_t1": 2.9e-2, "beta_exp": 7.5,
            "num_steps": 1000, "variance": "beta", "clip": 5.0, "rescale": 1.0, "n_bands": None, "noise_scale": 1.0}
PROCESSORS = [(False, 0.4), (False, 0.4), (True, 0.4), (True, 0.75)]  # the grid's (processor.use, power_std)


def real_codec() -> HFEncodec:
    """``facebook/encodec_32khz``'s shape (its config.json), random weights."""
    from transformers import EncodecConfig, EncodecModel

    cfg = EncodecConfig(sampling_rate=SAMPLE_RATE, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                        codebook_size=2048, codebook_dim=128, hidden_size=128, target_bandwidths=[2.2],
                        num_lstm_layers=2, num_residual_layers=1, norm_type="weight_norm", pad_mode="reflect",
                        use_conv_shortcut=False, normalize=False, chunk_length_s=None, overlap=None)
    return HFEncodec(model=EncodecModel(cfg))


def real_package(seed: int = 0) -> dict:
    """A release-layout package (plain-dict configs) with random U-Net weights and processor statistics."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the U-Nets' default initialisation
    pkg: dict = {"sample_rate": SAMPLE_RATE, "n_bands": len(PROCESSORS)}
    for i, (use, power_std) in enumerate(PROCESSORS):
        cfg = {"channels": 1, "diffusion_unet": dict(UNET), "schedule": dict(SCHEDULE),
               "processor": {"name": "multi_band_processor", "use": use, "n_bands": 8, "num_samples": 10_000,
                             "power_std": power_std}}
        state = {}
        if use:
            state = {"counts": torch.full((1,), 1000.0), "sum_x": torch.randn(8, generator=g) * 10,
                     "sum_x2": (0.05 + torch.rand(8, generator=g) * 0.1) * 1000,
                     "sum_target_x2": (0.05 + torch.rand(8, generator=g) * 0.1) * 1000}
        pkg[i] = {"cfg": cfg, "model_state": DiffusionUNet.from_cfg(cfg).state_dict(), "processor_state": state}
    return pkg


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time whole decodes (20 steps), not only the parts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="the U-Nets' dtype (float32, bfloat16, float16)")
    a = parse_args(ap, argv)
    codec = real_codec().to(a.device)
    mbd = MultiBandDiffusion(real_package(), codec, dtype=getattr(torch, a.dtype))
    params = sum(p.numel() for p in mbd.bands[0].unet.parameters())
    codes = torch.randint(0, 2048, (1, N_Q, round(a.seconds * FRAME_RATE)), device=a.device)
    n = codes.shape[-1] * SAMPLE_RATE // FRAME_RATE
    x = torch.randn(1, 1, n, device=a.device, dtype=mbd.dtype)
    latent = codec.decode_latent(codes).to(mbd.dtype)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def clock(fn) -> tuple[float, float]:
        """Wall seconds and this process's CPU seconds (all threads): the second is steadier on a shared machine."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    flags = cpu_flags()
    print(f"MBD vs EnCodec: {a.seconds:g} s at {SAMPLE_RATE} Hz mono, {a.device} {a.dtype}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; U-Net {params / 1e6:.1f} M params a band; "
          f"cpu flags: {flags}", flush=True)
    mbd.tokens_to_wav(codes[..., :10], seed=0, step_list=[999, 0])  # warm-up
    parts = {"encodec": lambda: codec.decode(codes),
             "unet_pass": lambda: mbd.bands[0].unet(x, 999, latent),
             # everything but the passes: the EnCodec reference, the latent, the noise, the processors, the re-EQ
             "rest": lambda: mbd.tokens_to_wav(codes, seed=0, step_list=[0])}
    if a.full:
        parts["mbd"] = lambda: mbd.tokens_to_wav(codes, seed=0)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in parts}
    with torch.no_grad():
        for r in range(a.repeats):  # interleaved, so the machine's drift hits every part alike
            for k, fn in parts.items():
                times[k].append(clock(fn))
            print(f"  run {r + 1} (wall / cpu s): " + ", ".join(f"{k} {v[-1][0]:.2f} / {v[-1][1]:.2f}"
                                                             for k, v in times.items()), flush=True)
    passes = len(PROCESSORS) * (len(DEFAULT_STEPS) - 1)
    result = {"seconds": a.seconds, "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpu_flags": flags,
              "unet_params_per_band": params, "repeats": a.repeats}
    for i, clock_name in enumerate(("wall", "cpu")):
        med = {k: statistics.median(v[i] for v in vs) for k, vs in times.items()}
        est = med["rest"] + passes * med["unet_pass"]
        result[clock_name] = {"encodec_s": med["encodec"], "unet_pass_s": med["unet_pass"], "rest_s": med["rest"],
                              "mbd_estimate_s": est, "ratio_estimate": est / med["encodec"]}
        print(f"{clock_name} seconds, medians of {a.repeats}: EnCodec {med['encodec']:.2f}; a U-Net pass "
              f"{med['unet_pass']:.2f}; the rest {med['rest']:.2f} -> MBD = rest + {passes} passes = {est:.1f}, "
              f"{est / med['encodec']:.0f}x EnCodec")
        if a.full:
            result[clock_name].update(mbd_s=med["mbd"], ratio=med["mbd"] / med["encodec"])
            print(f"  measured whole decodes: MBD {med['mbd']:.2f}, {med['mbd'] / med['encodec']:.0f}x EnCodec")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
