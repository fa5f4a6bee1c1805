#!/usr/bin/env python
"""Train the SpectralAR generator on pre-tokenized codes (examples/pretokenize.py) with accelerate.

Recipe (VAR): cross-entropy over all codes with class dropout (the null class for CFG), AdamW (0.9, 0.95), weight
decay 0.05, warmup then linear decay, gradient clipping 2.0, EMA of the weights. Periodic class-conditional sample
grids go through the pipeline; the final EMA weights are saved with the tokenizer as a SpectralARPipeline.

Examples:
  # CPU, the demo generator on Fashion-MNIST codes
  python examples/train_generator.py --tokenized_dataset runs/fmnist-codes --preset small --use_ema \
      --learning_rate 1e-3 --max_train_steps 8000 --output_dir runs/fmnist-generator

  # 8 GPUs, bf16: SpectralAR-d16 on ImageNet codes
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/train_generator.py \
      --tokenized_dataset runs/imagenet-codes --preset d16 --train_batch_size 96 --scale_lr --use_ema \
      --output_dir runs/spectralar-d16
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger

from spectralar_hf import SpectralARConfig, SpectralARForCausalLM, SpectralARPipeline, SpectralTokenizer
from spectralar_hf.argtypes import (
    finite_float,
    non_negative_int,
    positive_float,
    top_k_type,
)
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_optimization_arguments,
    add_run_arguments,
    parse_config_overrides,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import model_fingerprint, run_config
from spectralar_hf.training.scaffold import TrainingRun, run_script, save_image
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--tokenized_dataset", required=True, help="output_dir of pretokenize.py (or its data/)")
    data.add_argument("--tokenizer", default=None, help="default: the tokenizer recorded by pretokenize.py")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="small", help="a SpectralARConfig preset (sizes)")
    model.add_argument("--config_overrides", default=None,
                       help='JSON of config fields, e.g. \'{"tokens_per_step": 4}\'')
    model.add_argument("--pretrained_model_name_or_path", default=None, help="fine-tune this generator")

    sampling = parser.add_argument_group("sampling defaults saved in generation_config.json")
    sampling.add_argument("--guidance_scale", type=finite_float, default=None)
    sampling.add_argument("--guidance_schedule", choices=["constant", "linear"], default=None)
    sampling.add_argument("--top_k", type=top_k_type("--top_k"), default=None,
                          help="0 = no top-k (replaces a top-k saved with --pretrained_model_name_or_path)")
    sampling.add_argument("--top_p", type=positive_float, default=None, help="in (0, 1]")
    sampling.add_argument("--temperature", type=positive_float, default=None)

    add_optimization_arguments(parser, OptimizationDefaults(
        title="optimisation (defaults: VAR)", train_batch_size=64, scale_lr_help="lr x total batch / 256 (VAR)",
        adam_beta2=0.95, adam_weight_decay=0.05, lr_scheduler="linear",
        lr_scheduler_help="warmup then linear decay (VAR)", max_grad_norm=2.0))

    run = add_run_arguments(parser, "save a class-conditional grid every N")
    run.add_argument("--validation_classes", type=non_negative_int, nargs="*", default=None,
                     help="default: up to 10 classes")
    args = parser.parse_args(argv)

    if not os.path.isdir(args.tokenized_dataset):
        parser.error(f"--tokenized_dataset {args.tokenized_dataset!r} does not exist; run examples/pretokenize.py")
    if args.top_p is not None and args.top_p > 1:
        parser.error(f"--top_p must lie in (0, 1], got {args.top_p}")
    if args.pretrained_model_name_or_path and args.config_overrides:
        parser.error("--config_overrides builds a new generator; it cannot change --pretrained_model_name_or_path")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides, SpectralARConfig)
    except ValueError as error:
        parser.error(str(error))
    return args


def load_codes(args: argparse.Namespace) -> tuple[datasets.Dataset, str]:
    """The tokenized dataset and the path of the tokenizer that made it."""
    root = Path(args.tokenized_dataset)
    data_dir = root / "data" if (root / "data").is_dir() else root
    info_file = (data_dir.parent if data_dir != root else root) / "pretokenize.json"
    try:
        dataset = datasets.load_from_disk(str(data_dir))
    except FileNotFoundError:
        raise ValueError(f"{data_dir} is not a dataset saved by examples/pretokenize.py.") from None
    if len(dataset) == 0:
        raise ValueError(f"The tokenized dataset {data_dir} is empty.")
    if not {"codes", "label"} <= set(dataset.column_names):
        raise ValueError(f"{data_dir} has columns {dataset.column_names}; expected codes and label.")
    tokenizer = args.tokenizer
    if tokenizer is None:
        if not info_file.is_file():
            raise ValueError("Pass --tokenizer: there is no pretokenize.json recording which tokenizer made the codes.")
        try:
            tokenizer = json.loads(info_file.read_text())["tokenizer"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{info_file} is corrupt (no tokenizer recorded); pass --tokenizer.") from None
        tokenizer = recorded_tokenizer(tokenizer, info_file)
    return dataset, tokenizer


def recorded_tokenizer(path: str, info_file: Path) -> str:
    """The tokenizer recorded in pretokenize.json. Older versions recorded the path relative to the working directory
    of pretokenize.py: it is looked up from the working directory, then from each folder above the codes."""
    recorded = Path(path)
    if recorded.is_absolute() or recorded.exists():
        candidates = [recorded]
    else:
        candidates = [recorded] + [parent / recorded for parent in info_file.resolve().parents]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise ValueError(f"The tokenizer {path!r} recorded in {info_file} does not exist (looked from the working "
                     f"directory and the folders above the codes); pass --tokenizer.")


def load_tokenizer(path: str, tokenized_dataset: str | None = None) -> SpectralTokenizer:
    """The tokenizer at `path` (a tokenizer or a SpectralARPipeline folder); with `tokenized_dataset`, checked to be
    the one that made the codes (the fingerprint pretokenize.py recorded)."""
    root = resolve_model_dir(path, "--tokenizer", "SpectralTokenizer", model_type="spectral_tokenizer",
                             pipeline_class="SpectralARPipeline", subfolder="tokenizer",
                             hint="pass the tokenizer that made the codes (examples/train_tokenizer.py's tokenizer/)")
    if tokenized_dataset is not None:
        folder = Path(tokenized_dataset)
        settings_file = next((f for f in (folder / "pretokenize_settings.json",
                                          folder.parent / "pretokenize_settings.json") if f.is_file()), None)
        recorded = json.loads(settings_file.read_text()).get("tokenizer_sha256") if settings_file else None
        if recorded is not None and recorded != model_fingerprint(root):
            used = json.loads(settings_file.read_text()).get("tokenizer")
            raise ValueError(f"--tokenizer {path!r} is not the tokenizer that made the codes in {tokenized_dataset}: "
                             f"its weights or config differ from those of {used} when pretokenize.py ran; pass the "
                             f"tokenizer that made the codes, or encode them again with this one.")
    return SpectralTokenizer.from_pretrained(root).eval()


def build_model(args: argparse.Namespace, tokenizer: SpectralTokenizer, dataset) -> SpectralARForCausalLM:
    """A generator whose vocabulary, length, classes and image geometry come from the tokenizer and the data."""
    if args.pretrained_model_name_or_path:
        root = resolve_model_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path",
                                 "SpectralARForCausalLM", model_type="spectralar",
                                 pipeline_class="SpectralARPipeline", subfolder="transformer",
                                 hint="pass a generator saved by this script (pipeline/transformer)")
        return SpectralARForCausalLM.from_pretrained(root)
    label_feature = dataset.features["label"]
    if isinstance(label_feature, datasets.ClassLabel):
        names = dict(enumerate(label_feature.names))
    else:
        num_classes = int(np.max(dataset.with_format("numpy")["label"])) + 1
        names = {i: str(i) for i in range(num_classes)}
    t = tokenizer.config
    fields = dict(vocab_size=t.codebook_size, num_image_tokens=t.num_latent_tokens, num_classes=len(names),
                  id2label=names, image_size=t.image_size, num_channels=t.num_channels)
    fields.update(args.config_overrides)
    try:
        config = SpectralARConfig.from_preset(args.preset, **fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--preset {args.preset!r} / --config_overrides: {error}") from None
    return SpectralARForCausalLM(config)


def set_sampling_defaults(model: SpectralARForCausalLM, args: argparse.Namespace) -> None:
    config = model.generation_config
    config.do_sample = True
    for name in ("guidance_scale", "guidance_schedule", "top_k", "top_p", "temperature"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = TrainingRun(args, "train_generator", outputs=("pipeline",), progress_name="generator")
    accelerator = run.accelerator

    dataset, tokenizer_path = load_codes(args)
    tokenizer = load_tokenizer(tokenizer_path, args.tokenized_dataset)
    model = build_model(args, tokenizer, dataset)
    if model.config.vocab_size != tokenizer.config.codebook_size or (
            model.config.num_image_tokens != tokenizer.config.num_latent_tokens):
        raise ValueError("The generator does not match the tokenizer (vocab_size / num_image_tokens).")
    if len(dataset[0]["codes"]) != model.config.num_image_tokens:
        raise ValueError(f"The codes have length {len(dataset[0]['codes'])} but the generator expects "
                         f"{model.config.num_image_tokens}: were they made by this tokenizer?")
    if len(dataset) < args.train_batch_size:
        raise ValueError(f"The dataset has {len(dataset)} sequences, fewer than one batch of {args.train_batch_size}.")
    wrong = [c for c in args.validation_classes or [] if c >= model.config.num_classes]
    if wrong:
        raise ValueError(f"--validation_classes {wrong}: the generator has {model.config.num_classes} classes "
                         f"(0..{model.config.num_classes - 1}).")
    set_sampling_defaults(model, args)
    loader = torch.utils.data.DataLoader(
        dataset.with_format("torch", columns=["codes", "label"]), batch_size=args.train_batch_size, shuffle=True,
        drop_last=True, num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    config_record = run_config("train_generator.py", model.config, use_ema=args.use_ema,
                               grad_scaler=accelerator.scaler is not None)
    model, optimizer, loader, scheduler = run.prepare(model, optimizer, loader, scheduler,
                                                      config_record=config_record, model_cls=SpectralARForCausalLM)
    tokenizer.to(accelerator.device)

    model.train()
    for batch in run.batches(loader):
        codes, labels = batch["codes"].long(), batch["label"].long()
        with accelerator.accumulate(model):
            loss = model(input_ids=codes, class_labels=labels, labels=codes, use_cache=False).loss
            run.check_finite({"loss": loss})  # before the update
            run.backward_and_step(loss, model, optimizer, scheduler)
        if not run.sync_step():
            continue
        run.end_step(model, lambda: {"loss": loss.detach().item()}, scheduler)
        if run.validation_due:
            with run.full_model(model) as generator:  # every rank (sharded weights are gathered)
                if generator is not None:
                    log_samples(accelerator, generator, tokenizer, args, run.output_dir, run.global_step)

    with run.full_model(model, final=True) as final:
        if final is not None:
            pipeline = SpectralARPipeline(tokenizer=tokenizer, transformer=final)
            pipeline.save_pretrained(run.output_dir / "pipeline")
            log_samples(accelerator, final, tokenizer, args, run.output_dir, run.global_step)
            if args.push_to_hub:
                pipeline.push_to_hub(args.hub_model_id or run.output_dir.name, token=args.hub_token)
    run.end()


@torch.no_grad()
def log_samples(accelerator, generator_model: SpectralARForCausalLM, tokenizer, args, output_dir: Path,
                step: int) -> None:
    """A labelled grid of class-conditional samples (fixed seed) through the pipeline, from `generator_model` (the
    full model with the EMA weights, in eval mode)."""
    pipeline = SpectralARPipeline(tokenizer=tokenizer, transformer=generator_model)
    pipeline.set_progress_bar_config(disable=True)
    config = generator_model.config
    classes = args.validation_classes or list(range(min(config.num_classes, 10)))
    per_class = 8
    images = pipeline([c for c in classes for _ in range(per_class)],
                      generator=torch.Generator().manual_seed(args.seed)).images
    names = config.id2label or {}
    grid = prefix_strip([images[i * per_class : (i + 1) * per_class] for i in range(len(classes))],
                        row_labels=[str(names.get(c, c)).split(",")[0] for c in classes], min_cell=64)
    save_image(accelerator, grid, output_dir, "samples", step)


if __name__ == "__main__":
    run_script(main, __file__)
