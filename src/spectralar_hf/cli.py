"""`spectralar-hf` command line: generate images, look at what spectral tokens encode, inspect checkpoints.

    spectralar-hf generate PIPELINE --classes 0 Sneaker [--num-per-class 4] [--seed 0] [--guidance-scale 2.0]
                           [--top-k 100] [--top-p 0.95] [--num-tokens 24] [--output grid.png] [--strip strip.png]
                           (FAR: [--num-inference-steps 10] [--diffusion-steps linear|100])
    spectralar-hf reconstruct CHECKPOINT IMAGE [--prefixes 1 2 4 8 16 32] [--output strip.png]
    spectralar-hf info CHECKPOINT
    spectralar-hf evaluate tokenizer CHECKPOINT --idx-data-dir DIR [--num-images 1000] [--fid] --report r.json
    spectralar-hf evaluate pipeline PIPELINE --idx-data-dir DIR --samples-per-class 100 [--truncation 8 16]
                           [--floor-split train] [--knn-split train] --report r.json
    spectralar-hf evaluate causality [--num-images 10000]
    spectralar-hf model-card --template

PIPELINE is a directory saved by `SpectralARPipeline.save_pretrained` or `FARPipeline.save_pretrained` (`generate`,
`evaluate pipeline` and `info`); CHECKPOINT is a SpectralAR pipeline directory or a tokenizer directory
(config.json + model.safetensors). Bad paths or arguments print a one-line error and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _load_tokenizer(path: str):
    from .models.tokenizer import SpectralTokenizer

    root = Path(path)
    if not root.exists():
        raise CLIError(f"checkpoint {path!r} does not exist")
    if (root / "model_index.json").is_file():
        root = root / "tokenizer"
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CLIError(f"{path!r} is not a spectralar_hf checkpoint (no config.json or model_index.json found)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "spectral_tokenizer":
        raise CLIError(f"{config_file} describes a {model_type!r} model, not a spectral_tokenizer")
    return SpectralTokenizer.from_pretrained(root).eval()


def _load_pipeline(path: str):
    """A `SpectralARPipeline` or a `FARPipeline`, by the class named in model_index.json."""
    from .pipelines import FARPipeline, SpectralARPipeline

    root = Path(path)
    if not root.exists():
        raise CLIError(f"pipeline {path!r} does not exist")
    if not (root / "model_index.json").is_file():
        raise CLIError(f"{path!r} is not a pipeline directory (no model_index.json); `generate` needs a "
                       f"SpectralARPipeline (tokenizer + transformer) or a FARPipeline (vae + transformer + scheduler)")
    class_name = json.loads((root / "model_index.json").read_text()).get("_class_name")
    pipelines = {"SpectralARPipeline": SpectralARPipeline, "FARPipeline": FARPipeline}
    if class_name not in pipelines:
        raise CLIError(f"{path!r} holds a {class_name!r}; spectralar-hf works with {sorted(pipelines)}")
    pipe = pipelines[class_name].from_pretrained(root)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _is_far(pipe) -> bool:
    from .pipelines import FARPipeline

    return isinstance(pipe, FARPipeline)


def _sampling_arguments(pipe, args: argparse.Namespace) -> dict:
    """The sampling flags that apply to this pipeline; a flag of the other kind of pipeline is an error."""
    sampling = dict(guidance_scale=args.guidance_scale, guidance_schedule=args.guidance_schedule,
                    temperature=args.temperature)
    own = ("num_inference_steps", "diffusion_steps") if _is_far(pipe) else ("top_k", "top_p", "num_tokens")
    foreign = ("top_k", "top_p", "num_tokens") if _is_far(pipe) else ("num_inference_steps", "diffusion_steps")
    given = [name for name in foreign if getattr(args, name, None) is not None]
    if given:
        kind = "a FARPipeline" if _is_far(pipe) else "a SpectralARPipeline"
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        verb = "does" if len(given) == 1 else "do"
        raise CLIError(f"{flags} {verb} not apply to {kind}; FAR takes --num-inference-steps / --diffusion-steps, "
                       f"SpectralAR takes --top-k / --top-p / --num-tokens")
    sampling.update({name: getattr(args, name) for name in own if hasattr(args, name)})
    return sampling


def _diffusion_steps(value: str) -> str | int:
    if value == "linear":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'linear' or an int, got {value!r}") from None


def _image_geometry(pipe) -> tuple[int, int]:
    """(image side, channels) of the pipeline's images."""
    if _is_far(pipe):
        config = pipe.vae.config
        size = config.sample_size[0] if isinstance(config.sample_size, (list, tuple)) else config.sample_size
        return int(size), int(config.out_channels)
    return pipe.tokenizer.config.image_size, pipe.tokenizer.config.num_channels


def _load_image(path: str, size: int, channels: int) -> torch.Tensor:
    from .training.data import ImageTransform

    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise CLIError(f"image {path!r} does not exist") from None
    except OSError as error:
        raise CLIError(f"cannot read image {path!r}: {error}") from None
    return ImageTransform(size, channels)(image).unsqueeze(0)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(-1, 1) - b).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def cmd_info(args: argparse.Namespace) -> None:
    if (Path(args.checkpoint) / "model_index.json").is_file():
        pipe = _load_pipeline(args.checkpoint)
        if _is_far(pipe):
            _print_far_info(pipe, args.checkpoint)
            return
        _print_generator_info(pipe.transformer, args.checkpoint)
    tokenizer = _load_tokenizer(args.checkpoint)
    config = tokenizer.config
    parameters = sum(p.numel() for p in tokenizer.parameters())
    print(f"tokenizer: {args.checkpoint}")
    print(f"  image: {config.image_size}x{config.image_size}, {config.num_channels} channel(s), patch {config.patch_size}")
    print(f"  encoder: width {config.encoder_hidden_size}, depth {config.encoder_num_hidden_layers}, "
          f"heads {config.encoder_num_attention_heads}; decoder: width {config.decoder_hidden_size}, "
          f"depth {config.decoder_num_hidden_layers}, heads {config.decoder_num_attention_heads}")
    print(f"  tokens: N = {config.num_latent_tokens}, codebook {config.codebook_size} x {config.token_dim}, "
          f"causal mask {'on' if config.causal else 'off'}, spectral supervision "
          f"{'on' if config.spectral_supervision else 'off'}")
    print(f"  parameters: {parameters / 1e6:.2f}M")
    print(f"  omega: {config.omega}")


def _print_generator_info(transformer, path: str) -> None:
    config = transformer.config
    parameters = sum(p.numel() for p in transformer.parameters())
    names = [config.id2label[i] for i in range(config.num_classes)] if config.id2label else []
    print(f"pipeline: {path}")
    print(f"transformer: width {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads} heads, vocabulary {config.vocab_size}, {config.num_image_tokens} tokens "
          f"in {config.num_steps} steps of {config.tokens_per_step}, {parameters / 1e6:.2f}M parameters")
    print(f"  classes ({config.num_classes}; null class {config.null_class_id} "
          f"{'trained' if config.has_null_class else 'untrained: no CFG'}): "
          + ", ".join(f"{i}={name}" for i, name in enumerate(names[:20])) + (" ..." if len(names) > 20 else ""))


def _print_far_info(pipe, path: str) -> None:
    config = pipe.transformer.config
    vae = pipe.vae.config
    size, channels = _image_geometry(pipe)
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    names = [config.id2label[i] for i in range(config.num_classes)] if config.id2label else []
    print(f"FAR pipeline: {path}")
    print(f"  vae: {size}x{size}, {channels} channel(s) -> {config.latent_channels} x {config.latent_size} x "
          f"{config.latent_size} latents, scaling_factor {vae.scaling_factor:.4f}")
    print(f"  transformer: width {config.hidden_size}, {config.encoder_layers}+{config.decoder_layers} blocks, "
          f"{config.num_attention_heads} heads, head {config.head_depth} x {config.head_width}, F = "
          f"{config.num_levels} levels ({config.filter_kind}), {parameters / 1e6:.2f}M parameters")
    print(f"  sampling defaults: {config.num_inference_steps} outer steps, diffusion steps {config.diffusion_steps}, "
          f"guidance {config.guidance_scale} ({config.guidance_schedule}), temperature {config.temperature}")
    print(f"  classes ({config.num_classes}; null class {config.null_class_id} "
          f"{'trained' if config.has_null_class else 'untrained: no CFG'}): "
          + ", ".join(f"{i}={name}" for i, name in enumerate(names[:20])) + (" ..." if len(names) > 20 else ""))


def _parse_classes(values: list[str]) -> list[int | str]:
    return [int(value) if value.lstrip("-").isdigit() else value for value in values]


@torch.no_grad()
def cmd_generate(args: argparse.Namespace) -> None:
    from .visualization import prefix_strip

    if args.num_per_class < 1:
        raise CLIError("--num-per-class must be >= 1")
    pipe = _load_pipeline(args.checkpoint)
    classes = _parse_classes(args.classes)
    try:
        ids = [pipe.get_label_ids(c)[0] if isinstance(c, str) else c for c in classes]
    except ValueError as error:
        raise CLIError(str(error).splitlines()[0]) from None
    labels = [c for c in ids for _ in range(args.num_per_class)]
    output = pipe(labels, generator=torch.Generator().manual_seed(args.seed),
                  return_intermediates=args.strip is not None, **_sampling_arguments(pipe, args))
    names = pipe.transformer.config.id2label or {}
    rows = [output.images[i * args.num_per_class : (i + 1) * args.num_per_class] for i in range(len(ids))]
    row_labels = [str(names.get(i, i)).split(",")[0] for i in ids]
    _save(prefix_strip(rows, row_labels=row_labels), args.output)
    if args.strip is not None:
        steps = len(output.intermediates)
        chosen = sorted({round(f * (steps - 1)) for f in (0, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1)})
        if _is_far(pipe):
            from .spectral import far_level_schedule

            config = pipe.transformer.config
            levels = far_level_schedule(steps, config.num_levels)
            column_labels = [f"level {levels[s]}/{config.num_levels}" for s in chosen]
        else:
            step_size = pipe.transformer.config.tokens_per_step
            column_labels = [f"{(s + 1) * step_size} tokens" for s in chosen]
        strip_rows = [[output.intermediates[s][i * args.num_per_class] for s in chosen] for i in range(len(ids))]
        _save(prefix_strip(strip_rows, row_labels=row_labels, column_labels=column_labels), args.strip)
    shape = tuple((output.latents if _is_far(pipe) else output.codes).shape)
    print(f"generated {len(labels)} images of classes {ids} ({'latents' if _is_far(pipe) else 'codes'} {shape})")


def _save(image, path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    print(f"wrote {target}")


def _data_source(args: argparse.Namespace) -> dict:
    sources = {"idx_data_dir": args.idx_data_dir, "train_data_dir": args.data_dir, "dataset_name": args.dataset}
    if sum(value is not None for value in sources.values()) != 1:
        raise CLIError("give exactly one of --idx-data-dir, --data-dir, --dataset")
    for flag, value in (("--idx-data-dir", args.idx_data_dir), ("--data-dir", args.data_dir)):
        if value is not None and not Path(value).is_dir():
            raise CLIError(f"{flag} {value!r} is not a directory")
    return sources


def _extractor(args: argparse.Namespace):
    from .evaluation import InceptionFeatureExtractor

    try:
        return InceptionFeatureExtractor(path=args.inception)
    except FileNotFoundError as error:
        raise CLIError(str(error).splitlines()[0]) from None


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.target != "causality" and args.checkpoint is None:
        raise CLIError(f"evaluate {args.target} needs a checkpoint directory")
    from .evaluation.curves import format_markdown_table, plot_curve
    from .evaluation.classification import knn_class_agreement
    from .evaluation.report import (evaluate_pipeline, evaluate_tokenizer, load_evaluation_images, reference_fid,
                                    write_report)

    if args.target == "causality":
        from .evaluation.causality import main as causality_main

        causality_main(["--num_images", str(args.num_images or 10000), "--data", args.causality_data])
        return
    sources = _data_source(args)
    if args.target == "tokenizer":
        tokenizer = _load_tokenizer(args.checkpoint)
        config = tokenizer.config
        extractor = _extractor(args) if args.fid else None
        images, _ = load_evaluation_images(config.image_size, config.num_channels, split=args.split,
                                           num_images=args.num_images, seed=args.seed, **sources)
        report = {"checkpoint": args.checkpoint, "split": args.split, **sources,
                  **evaluate_tokenizer(tokenizer, images, args.prefixes, extractor)}
        summary = {k: report[k] for k in ("psnr", "ssim", "rfid") if k in report}
        table = format_markdown_table(report["prefixes"])
        curve = ("num_tokens", ["psnr_target", "psnr_full"], "PSNR (dB)")
    else:
        pipe = _load_pipeline(args.checkpoint)
        image_size, num_channels = _image_geometry(pipe)
        sampling = _sampling_arguments(pipe, args)
        if args.truncation and _is_far(pipe):
            raise CLIError("--truncation (FID of token prefixes) applies to SpectralAR pipelines only")
        extractor = _extractor(args)
        reference, reference_labels = load_evaluation_images(image_size, num_channels,
                                                             split=args.split, num_images=args.num_images,
                                                             seed=args.seed, **sources)
        classifier = None
        if args.knn_split:
            classifier = load_evaluation_images(image_size, num_channels, split=args.knn_split,
                                                num_images=args.knn_images, seed=args.seed + 2, **sources)
            if classifier[1] is None or reference_labels is None:
                raise CLIError(f"--knn-split needs a labelled dataset; {args.knn_split!r} / {args.split!r} have no "
                               f"label column")
        report = {"checkpoint": args.checkpoint, "split": args.split, **sources,
                  **evaluate_pipeline(pipe, reference, args.samples_per_class, args.classes, extractor,
                                      args.truncation or (), seed=args.seed, classifier_reference=classifier,
                                      **sampling)}
        if classifier is not None:  # the ceiling: the same classifier on the real reference images
            report["knn_accuracy_real"] = knn_class_agreement(reference, reference_labels, *classifier)
        if args.floor_split:
            other, _ = load_evaluation_images(image_size, num_channels, split=args.floor_split,
                                              num_images=len(reference), seed=args.seed + 1, **sources)
            report["fid_floor"] = reference_fid(other, reference, extractor)
            report["fid_floor_splits"] = [args.floor_split, args.split]
        summary = {k: report[k] for k in ("gfid", "precision", "recall", "fid_floor", "knn_accuracy",
                                          "knn_accuracy_real") if k in report}
        table = format_markdown_table(report["truncation"]) if report["truncation"] else ""
        curve = ("num_tokens", ["fid"], "FID")
    write_report(args.report, report)
    print(json.dumps(summary, indent=2))
    if table:
        print(table)
    if args.plot and (report.get("prefixes") or report.get("truncation")):
        rows = report.get("prefixes") or report["truncation"]
        plot_curve(rows, curve[0], curve[1], args.plot, ylabel=curve[2], xlabel="tokens")
        print(f"wrote {args.plot}")
    print(f"wrote {args.report}")


def cmd_model_card(args: argparse.Namespace) -> None:
    from .hub import model_card_template

    if not args.template:
        raise CLIError("use --template to print the model card template (pipelines write their card on push)")
    sys.stdout.write(model_card_template())


@torch.no_grad()
def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .spectral import lowpass
    from .visualization import prefix_strip

    tokenizer = _load_tokenizer(args.checkpoint)
    config = tokenizer.config
    n = config.num_latent_tokens
    prefixes = args.prefixes or sorted({max(1, round(n * f)) for f in (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)})
    bad = [k for k in prefixes if not 1 <= k <= n]
    if bad:
        raise CLIError(f"--prefixes {bad} outside [1, {n}] (this tokenizer has N = {n} tokens)")
    image = _load_image(args.image, config.image_size, config.num_channels)
    codes = tokenizer.encode(image).codes
    batch_codes = codes.expand(len(prefixes), -1)
    decoded = tokenizer.decode(batch_codes, torch.tensor(prefixes)).reconstruction  # one batched pass
    targets = lowpass(image.expand(len(prefixes), -1, -1, -1), torch.tensor([config.omega[k - 1] for k in prefixes]))
    strip = prefix_strip(
        [list(targets), list(decoded)],
        row_labels=["DCT low-pass", "decoded"],
        column_labels=[f"k={k} (w={config.omega[k - 1]})" for k in prefixes],
    )
    print(f"codes: {codes[0].tolist()}")
    print(f"{'k':>4} {'omega_k':>8} {'PSNR to low-pass':>17} {'PSNR to image':>14}")
    for k, target, reconstruction in zip(prefixes, targets, decoded):
        print(f"{k:>4} {config.omega[k - 1]:>8} {_psnr(reconstruction, target):>14.2f} dB "
              f"{_psnr(reconstruction, image[0]):>11.2f} dB")
    _save(strip, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectralar-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="class-conditional samples as a labelled PNG grid")
    generate.add_argument("checkpoint", help="a SpectralARPipeline or FARPipeline directory")
    generate.add_argument("--classes", nargs="+", required=True, help="class ids or names")
    generate.add_argument("--num-per-class", type=int, default=4)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--guidance-scale", type=float, default=None, help="1.0 = no CFG; default: the model's")
    generate.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--top-p", type=float, default=None)
    generate.add_argument("--num-tokens", type=int, default=None, help="truncated generation: decode only k tokens")
    generate.add_argument("--num-inference-steps", type=int, default=None, help="FAR: outer (frequency) steps")
    generate.add_argument("--diffusion-steps", type=_diffusion_steps, default=None,
                          help="FAR: inner steps per outer step, 'linear' (40 -> 100) or an int")
    generate.add_argument("--output", default="outputs/samples.png")
    generate.add_argument("--strip", default=None, help="also write the coarse-to-fine strip to this PNG")
    generate.set_defaults(handler=cmd_generate)

    info = commands.add_parser("info", help="sizes and omega schedule of a checkpoint")
    info.add_argument("checkpoint")
    info.set_defaults(handler=cmd_info)

    reconstruct = commands.add_parser("reconstruct", help="image -> spectral tokens -> coarse-to-fine strip")
    reconstruct.add_argument("checkpoint")
    reconstruct.add_argument("image")
    reconstruct.add_argument("--prefixes", type=int, nargs="+", default=None, help="prefix lengths k to decode")
    reconstruct.add_argument("--output", default="outputs/reconstruction_strip.png")
    reconstruct.set_defaults(handler=cmd_reconstruct)

    evaluate = commands.add_parser("evaluate", help="rFID / PSNR of a tokenizer, gFID / precision / recall of a "
                                                    "pipeline, or the R^2 causality table; writes a JSON report")
    evaluate.add_argument("target", choices=["tokenizer", "pipeline", "causality"])
    evaluate.add_argument("checkpoint", nargs="?", default=None)
    evaluate.add_argument("--idx-data-dir", default=None, help="MNIST-format IDX folder (e.g. Fashion-MNIST)")
    evaluate.add_argument("--data-dir", default=None, help="an image folder")
    evaluate.add_argument("--dataset", default=None, help="a datasets id")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--num-images", type=int, default=None, help="reference / evaluation images (subset)")
    evaluate.add_argument("--prefixes", type=int, nargs="+", default=None, help="tokenizer: prefix lengths")
    evaluate.add_argument("--fid", action="store_true", help="tokenizer: also rFID (needs the Inception network)")
    evaluate.add_argument("--inception", default=None, help="TorchScript Inception path (default: fid-helper's)")
    evaluate.add_argument("--samples-per-class", type=int, default=100)
    evaluate.add_argument("--classes", type=int, nargs="+", default=None)
    evaluate.add_argument("--guidance-scale", type=float, default=None)
    evaluate.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    evaluate.add_argument("--temperature", type=float, default=None)
    evaluate.add_argument("--top-k", type=int, default=None)
    evaluate.add_argument("--top-p", type=float, default=None)
    evaluate.add_argument("--num-inference-steps", type=int, default=None, help="FAR: outer (frequency) steps")
    evaluate.add_argument("--diffusion-steps", type=_diffusion_steps, default=None,
                          help="FAR: inner steps per outer step, 'linear' (40 -> 100) or an int")
    evaluate.add_argument("--truncation", type=int, nargs="+", default=None, help="pipeline: FID at these lengths")
    evaluate.add_argument("--floor-split", default=None, help="pipeline: also FID(this split vs --split)")
    evaluate.add_argument("--knn-split", default=None,
                          help="pipeline: also the class agreement of the samples under a pixel k-NN classifier on "
                               "this split (and of the real --split images, the ceiling)")
    evaluate.add_argument("--knn-images", type=int, default=10000, help="pipeline: k-NN reference images")
    evaluate.add_argument("--causality-data", choices=["auto", "cifar100", "crops"], default="auto")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--report", default="outputs/evaluation.json")
    evaluate.add_argument("--plot", default=None, help="PNG of the prefix / truncation curve")
    evaluate.set_defaults(handler=cmd_evaluate)

    card = commands.add_parser("model-card", help="print the model card template (MODEL_CARD.md)")
    card.add_argument("--template", action="store_true")
    card.set_defaults(handler=cmd_model_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with status 2 on bad arguments
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        args.handler(args)
    except CLIError as error:
        print(f"spectralar-hf {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as error:
        print(f"spectralar-hf {args.command}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
