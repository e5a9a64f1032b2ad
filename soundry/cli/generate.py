"""``soundry generate "PROMPT" -o out.wav``: one clip, locally with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from soundry.config import PRECISIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.wav", help="output file; its extension picks the format")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default="audiogen", help="registry name (audiogen, musicgen, musicgen-medium, ...)")
    g.add_argument("--model-path", help="a model folder (audiocraft release or transformers format)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--top-k", type=int, help="AudioGen/MusicGen (default 15)")
    p.add_argument("--top-p", type=float, help="AudioGen/MusicGen (default 0.9)")
    p.add_argument("--temperature", type=float, help="AudioGen/MusicGen (default 1.0)")
    p.add_argument("--cfg-coef", type=float, help="guidance (default: 3.0; a Stable Audio model's own)")
    p.add_argument("--steps", type=int, help="denoising steps of a Stable Audio model (default: the model's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--negative-prompt")
    p.add_argument("--input-audio", help="an audio file (wav, flac, ogg, mp3) to continue; --duration is the total")
    p.add_argument("--continuation-start", type=float, default=0.0, help="seconds into --input-audio to start from")
    p.add_argument("--continuation-end", type=float, help="seconds into --input-audio to end at (default: its end)")
    p.add_argument("--melody", metavar="FILE",
                   help="an audio file (wav, flac, ogg, mp3) whose tune the music follows (melody models: "
                        "musicgen-melody, musicgen-stereo-melody, ...)")
    p.add_argument("--decoder", choices=["encodec", "mbd"],
                   help="how the tokens become audio: encodec (default) or mbd, MultiBand Diffusion (MusicGen "
                        "models; slower, higher fidelity)")
    p.add_argument("--mbd-path", help="local --decoder mbd: the MultiBand Diffusion weights (mbd_musicgen_32khz.th "
                                      "or its folder; the mbd_path setting, also SOUNDRY_MBD_PATH; default: the "
                                      "hub's facebook/multiband-diffusion)")
    p.add_argument("--normalization", default="loudness", choices=["loudness", "peak", "rms", "none"])
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="how the LM runs: auto (default: bf16 on a GPU, fp32 on the CPU), fp32, bf16, fp16, "
                        "int8 (CPU); also SOUNDRY_PRECISION or soundry.toml")
    p.add_argument("--int8", action="store_const", const="int8", dest="precision", help="same as --precision int8")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from soundry.audio import FORMATS, encode, normalize
    from soundry.engine import Engine, GenerationRequest
    from soundry.models import load_model

    out = Path(args.output)
    fmt = out.suffix.lstrip(".").lower() or "wav"
    if fmt not in FORMATS:
        print(f"error: unsupported output extension .{fmt}; use one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print("error: --duration must be > 0", file=sys.stderr)
        return 2
    from soundry.config import Settings

    try:  # --precision > SOUNDRY_PRECISION > soundry.toml > auto (no compilation: one clip would not repay it)
        settings = Settings.load(getattr(args, "config", None), finalize=False, precision=args.precision,
                                 data_dir=getattr(args, "data_dir", None), mbd_path=args.mbd_path)
        if not args.model_path:  # --model NAME may name a model added with `soundry models add`
            from soundry.models.sources.added import open_catalog

            open_catalog(settings.data_dir, settings.model_paths)
        model = load_model(args.model_path or args.model, device=args.device, precision=settings.precision,
                           packed=settings.linear_kernel)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.decoder == "mbd" and model.family != "musicgen":
        print(f"error: --decoder mbd: MultiBand Diffusion decodes MusicGen's tokens; {model.name} is an "
              f"{model.family} model", file=sys.stderr)
        return 2
    diffusion = getattr(model, "is_diffusion", False)
    if diffusion and (given := [f"--{n.replace('_', '-')}" for n in ("top_k", "top_p", "temperature")
                                if getattr(args, n) is not None]):
        print(f"error: {', '.join(given)}: {model.name} is a diffusion model (it takes --steps and --cfg-coef)",
              file=sys.stderr)
        return 2
    if not diffusion and args.steps is not None:
        print(f"error: --steps: {model.name} is an autoregressive model (steps apply to Stable Audio)",
              file=sys.stderr)
        return 2
    guidance = args.cfg_coef if args.cfg_coef is not None else (model.default_guidance if diffusion else 3.0)
    request = GenerationRequest(args.prompt, args.duration, 15 if args.top_k is None else args.top_k,
                                0.9 if args.top_p is None else args.top_p,
                                1.0 if args.temperature is None else args.temperature, guidance, args.seed,
                                args.negative_prompt, steps=args.steps)
    for option, given, read in (("--input-audio", args.input_audio, read_prompt),
                                ("--melody", args.melody, read_melody)):
        if given:
            try:
                read(args, request)
            except (OSError, ValueError) as exc:
                print(f"error: {option}: {exc}", file=sys.stderr)
                return 2
    try:
        mbd = load_local_mbd(settings, model) if args.decoder == "mbd" else None
    except Exception as exc:  # no weights at hand, or a file that is not MBD's
        print(f"error: --decoder mbd: {exc}", file=sys.stderr)
        return 1
    if diffusion:
        from soundry.engine.diffusion.engine import DiffusionEngine

        engine = DiffusionEngine(model, max_batch=1).start()
    else:
        engine = Engine(model, max_batch=1).start()
    bar = tqdm(total=100, unit="%", desc=f"{model.name}: {args.prompt[:40]}")

    def progress(done: int, total: int) -> None:
        bar.n = int(100 * done / total)
        bar.refresh()

    try:
        result = engine.submit(request, progress).result()
    except ValueError as exc:  # e.g. an audio prompt as long as the clip, a melody for a model that takes none
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.stop()
        bar.close()
    audio, rate = result.audio, result.sample_rate
    if mbd is not None:
        print("decoding with MultiBand Diffusion…", file=sys.stderr)
        # as a served task: the request's seed (the engine drew one if none was given), the EnCodec decode's length
        audio = mbd.tokens_to_wav(result.tokens[None], seed=int(request.seed))[0][..., :result.audio.shape[-1]]
    encoded = encode(normalize(audio.numpy(), rate, args.normalization), rate, fmt)
    out.write_bytes(encoded.data)
    print(f"wrote {out} ({audio.shape[-1] / rate:.2f} s, {encoded.sample_rate} Hz)")
    return 0


def read_audio(path: str):
    """A local audio file (wav, flac, ogg, mp3) as ([C, N] float32 numpy, rate), with the uploads' checks."""
    from soundry.audio.decode import decode_audio

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"{path}: {exc.strerror or exc}") from None
    return decode_audio(data, max_seconds=3600.0)


def read_prompt(args: argparse.Namespace, request) -> None:
    """The --input-audio clip between --continuation-start and --continuation-end, as the request's audio prompt."""
    import torch

    from soundry.audio.decode import sample_range

    audio, rate = read_audio(args.input_audio)
    span = sample_range(audio.shape[1], rate, args.continuation_start, args.continuation_end)
    if not 0 <= span.start < span.stop:
        raise ValueError(f"the start/end select nothing of a {audio.shape[1] / rate:.2f} s clip")
    request.prompt_audio, request.prompt_sample_rate = torch.from_numpy(audio[:, span].copy()), rate


def read_melody(args: argparse.Namespace, request) -> None:
    """The --melody file, whole, as the tune the request follows (the engine refuses it for other models)."""
    import torch

    audio, rate = read_audio(args.melody)
    request.melody, request.melody_sample_rate = torch.from_numpy(audio), rate


def load_local_mbd(settings, model):
    """MultiBand Diffusion over the model's codec, from the mbd_path setting (--mbd-path, SOUNDRY_MBD_PATH,
    soundry.toml), else the hub's release file (downloaded into the Hugging Face cache once)."""
    from soundry.models.audiocraft.codecs.mbd import load_mbd
    from soundry.tasks.engines import mbd_weights

    return load_mbd(mbd_weights(settings.mbd_path), model.codec)
