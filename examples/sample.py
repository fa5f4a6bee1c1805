#!/usr/bin/env python
"""Sample a class-balanced image set from a SpectralAR or FAR pipeline on any number of processes and save it as one
ADM-format `.npz` (`arr_0`: uint8 N x H x W x 3, `arr_1`: labels), the way papers report FID (50 per ImageNet class).

Image i has class `classes[i % C]` and its own generator seeded from (--seed, i), so the images do not depend on the
number of processes. The set is cut into shards of --shard_size consecutive images, divided among the processes;
each finished shard is saved to `OUTPUT.shards/` through a temporary file and a rename, so a killed run continues
where it stopped (a shard found truncated or damaged on resume is deleted, with a warning, and sampled again).
Rank 0 then merges the shards into OUTPUT (streamed: memory holds one shard) and writes `OUTPUT` with `.json` for
`.npz`: the sampling settings (resolved defaults included), the pipeline's fingerprint, the versions, the command and
the wall time. Score the file with `spectralar-hf evaluate npz OUTPUT --reference ...`.

Nothing this script did not write is replaced or deleted: an existing OUTPUT, OUTPUT `.json` or PNG of the set's
names in --png_dir is refused unless --overwrite (or the same set is resumed), and --overwrite and the clean-up after
the merge delete only this script's files in `OUTPUT.shards/` (shards, even damaged ones, and its settings file); a
shard folder that also holds other files is refused under --overwrite, naming them.

Examples:
  # the demo: 1,000 per class on this machine
  python examples/sample.py checkpoints/spectralar-fashion-mnist --samples_per_class 1000 \
      --output outputs/fmnist_10k.npz
  # paper scale: 50 per ImageNet class on 8 GPUs, bf16, compiled sampling, CFG 4.0
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/sample.py PIPELINE \
      --guidance_scale 4.0 --batch_size 250 --compile --output samples/spectralar_50k.npz
"""

from __future__ import annotations

import argparse
import json
import os
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from spectralar_hf.argtypes import (diffusion_steps, flag_given, non_negative_int, positive_float, positive_int,
                                    probability, random_seed, top_k_type)
from spectralar_hf.evaluation.sampling import (SETTINGS_RECORD_KEY, SHARD_SETTINGS_NAME, class_balanced_labels,
                                               image_generators, images_to_uint8_rgb, merge_shards,
                                               pipeline_fingerprint, read_settings, remove_damaged_shards,
                                               remove_our_shard_files, shard_folder_files, shard_path, shard_ranges,
                                               write_shard)
from spectralar_hf.pipelines import FARPipeline, SpectralARPipeline
from spectralar_hf.training.checkpointing import write_json_atomic
from spectralar_hf.utils import pipeline_class_name

DEFAULT_SAMPLES_PER_CLASS = 50  # ADM / VAR / MAR / TiTok: 50,000 ImageNet samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a SpectralARPipeline or FARPipeline directory")
    parser.add_argument("--output", required=True, help="the .npz to write (settings go to the same name .json)")
    parser.add_argument("--samples_per_class", type=positive_int, default=DEFAULT_SAMPLES_PER_CLASS)
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class ids or names (default: every class of the pipeline)")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--batch_size", type=positive_int, default=64, help="images per forward, per process")
    parser.add_argument("--shard_size", type=positive_int, default=500,
                        help="images per shard (the unit of resumption); fixed for a set")
    parser.add_argument("--guidance_scale", type=positive_float, default=None, help="1.0 = no CFG")
    parser.add_argument("--guidance_schedule", choices=["constant", "linear"], default=None)
    parser.add_argument("--temperature", type=positive_float, default=None)
    parser.add_argument("--top_k", type=top_k_type("--top_k"), default=None, help="SpectralAR; 0 = no top-k")
    parser.add_argument("--top_p", type=probability, default=None, help="SpectralAR; 1 = no nucleus filtering")
    parser.add_argument("--trunc", type=non_negative_int, default=None,
                        help="SpectralAR: discard the last K tokens (the paper's Trunc.K)")
    parser.add_argument("--num_inference_steps", type=positive_int, default=None, help="FAR: outer steps")
    parser.add_argument("--diffusion_steps", type=diffusion_steps, default=None,
                        help="FAR: inner steps per outer step, 'linear' or an int")
    parser.add_argument("--compile", action="store_true",
                        help="SpectralAR: compile the per-step forward (CUDA graphs on CUDA)")
    parser.add_argument("--png_dir", default=None, help="also write every image as PNG (INDEX_LABEL.png)")
    parser.add_argument("--keep_shards", action="store_true", help="keep OUTPUT.shards/ after merging")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an OUTPUT (and OUTPUT.json, and this script's shards) made with other settings, "
                             "and PNGs of the same names in --png_dir; files of OUTPUT.shards/ that this script did "
                             "not write are never deleted")
    args = parser.parse_args(argv)
    if not args.output.endswith(".npz"):
        parser.error(f"--output {args.output!r} must end in .npz (the ADM sample format)")
    if not (Path(args.pipeline) / "model_index.json").is_file():
        parser.error(f"{args.pipeline!r} is not a pipeline directory (no model_index.json)")
    if Path(args.output).is_dir():
        parser.error(f"--output {args.output!r} is a directory; give a file name ending in .npz")
    return args


def load_pipeline(path: str) -> SpectralARPipeline | FARPipeline:
    class_name = pipeline_class_name(json.loads((Path(path) / "model_index.json").read_text()))
    pipelines = {"SpectralARPipeline": SpectralARPipeline, "FARPipeline": FARPipeline}
    if class_name not in pipelines:
        raise ValueError(f"{path!r} holds a {class_name!r}; sample.py samples a SpectralARPipeline or a FARPipeline.")
    pipe = pipelines[class_name].from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_arguments(pipe, args: argparse.Namespace) -> dict:
    """The pipeline call's sampling keywords, defaults resolved (so that the JSON records what was used)."""
    is_far = isinstance(pipe, FARPipeline)
    foreign = ("top_k", "top_p", "trunc", "compile") if is_far else ("num_inference_steps", "diffusion_steps")
    given = [name for name in foreign if flag_given(getattr(args, name))]
    if given:
        flags = ", ".join(f"--{name}" for name in given)
        raise ValueError(f"{flags} do(es) not apply to a {type(pipe).__name__}; FAR takes --num_inference_steps / "
                         f"--diffusion_steps, SpectralAR --top_k / --top_p / --trunc / --compile.")
    common = dict(guidance_scale=args.guidance_scale, guidance_schedule=args.guidance_schedule,
                  temperature=args.temperature)
    if is_far:
        if pipe.transformer.config.num_classes == 0:
            raise ValueError("this FARPipeline is text-conditional only (no classes); sample.py draws class-balanced "
                             "sets of a class-conditional pipeline.")
        return pipe._sampling_settings(num_steps=args.num_inference_steps, diffusion_steps=args.diffusion_steps,
                                       **common)
    settings = pipe._sampling_settings(top_k=args.top_k, top_p=args.top_p, **common)
    total = pipe.transformer.config.num_image_tokens
    if args.trunc is not None:
        from spectralar_hf.evaluation.report import check_trunc

        check_trunc([args.trunc], total, pipe.transformer.config.tokens_per_step, name="--trunc")
    settings["num_tokens"] = total - (args.trunc or 0)
    return settings


def call_arguments(pipe, settings: dict) -> dict:
    """`settings` under the pipeline's keyword names (FAR's outer steps are `num_inference_steps`)."""
    if isinstance(pipe, FARPipeline):
        return {("num_inference_steps" if key == "num_steps" else key): value for key, value in settings.items()}
    return settings


def resolve_classes(pipe, classes: list[str] | None) -> list[int]:
    num_classes = pipe.transformer.config.num_classes
    if classes is None:
        return list(range(num_classes))
    ids = [int(name) if name.lstrip("-").isdigit() else pipe.get_label_ids(name)[0] for name in classes]
    bad = [index for index in ids if not 0 <= index < num_classes]
    if bad:
        raise ValueError(f"--classes {bad} outside [0, {num_classes}) (this pipeline has {num_classes} classes).")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--classes {classes} names a class twice; each class is sampled --samples_per_class times.")
    return ids


def set_settings(args: argparse.Namespace, pipe, classes: list[int], sampling: dict, mixed_precision: str) -> dict:
    """What the images depend on: a resumed run (or an existing OUTPUT) must have been made with these."""
    return {"pipeline": str(Path(args.pipeline).resolve()), "pipeline_class": type(pipe).__name__,
            "pipeline_sha256": pipeline_fingerprint(args.pipeline), "classes": classes,
            "samples_per_class": args.samples_per_class, "num_samples": len(classes) * args.samples_per_class,
            "seed": args.seed, "shard_size": args.shard_size, "sampling": sampling,
            "mixed_precision": mixed_precision, "compile": args.compile}


def changed_settings(recorded: dict | None, settings: dict) -> str | None:
    """`None` when `recorded` matches `settings` (the pipeline compared by fingerprint, not location), else what
    differs."""
    if recorded is None:
        return "no readable settings were recorded"
    compared = [key for key in settings if key != "pipeline"]
    changed = [key for key in compared if recorded.get(key) != settings[key]]
    if not changed:
        return None
    return ", ".join("the pipeline's weights or config" if key == "pipeline_sha256" else
                     f"{key} {recorded.get(key)!r} -> {settings[key]!r}" for key in changed)


def check_output(output: Path, shards_dir: Path, settings: dict, overwrite: bool) -> tuple[bool, list[Path]]:
    """Compare OUTPUT, OUTPUT.json and the shards with `settings` (read-only, so every process can run it): returns
    (OUTPUT is complete with these settings, the files of an earlier set made otherwise to delete under --overwrite).
    Without --overwrite such files are a `ValueError`; with it, only files this script writes are listed, and a shard
    folder that also holds other files is a `ValueError` naming them (nothing of a user's is deleted)."""
    settings_file = output.with_suffix(".json")
    stale = []
    if output.exists():
        difference = changed_settings(read_settings(settings_file), settings)
        if difference is None:
            return True, []
        if not overwrite:
            raise ValueError(f"{output} exists and was sampled with other settings ({difference}); pass --overwrite "
                             f"to replace it, or choose another --output.")
        stale += [output] + ([settings_file] if settings_file.exists() else [])
    elif settings_file.exists() and not overwrite:  # replaced at the end: only by the record of the same set
        recorded = read_settings(settings_file)
        if recorded is None or SETTINGS_RECORD_KEY not in recorded:
            raise ValueError(f"{settings_file} exists and is not a settings record of sample.py; this run would "
                             f"replace it with the settings of its set: pass --overwrite to replace it, or choose "
                             f"another --output.")
        difference = changed_settings(recorded, settings)
        if difference is not None:
            raise ValueError(f"{settings_file} records a set sampled with other settings ({difference}) and "
                             f"{output.name} is gone; pass --overwrite to replace the record, or choose another "
                             f"--output.")
    elif settings_file.exists():
        stale.append(settings_file)
    if shards_dir.exists() and not shards_dir.is_dir():
        raise ValueError(f"{shards_dir} is a file, not a folder of this script's shards; move it away, or choose "
                         f"another --output.")
    if shards_dir.is_dir():
        difference = changed_settings(read_settings(shards_dir / SHARD_SETTINGS_NAME), settings)
        if difference is not None:
            ours, foreign = shard_folder_files(shards_dir)
            if foreign:  # --overwrite would not help: it deletes this script's files only
                names = ", ".join(path.name for path in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise ValueError(f"{shards_dir} holds {len(foreign)} file(s) that sample.py did not write ({names}); "
                                 f"it is not this script's shard folder (--overwrite deletes only its shards and "
                                 f"settings.json): move them away, or choose another --output.")
            if not overwrite:
                raise ValueError(f"{shards_dir} holds shards sampled with other settings ({difference}); pass "
                                 f"--overwrite to delete them, or choose another --output.")
            stale += ours
    return False, stale


def png_names(labels: np.ndarray) -> list[str]:
    """The PNG file names of a set (`write_pngs`): INDEX_LABEL.png."""
    return [f"{index:06d}_{label}.png" for index, label in enumerate(labels.tolist())]


def check_png_dir(png_dir: Path | None, labels: np.ndarray, shards_dir: Path, settings: dict,
                  overwrite: bool) -> None:
    """--png_dir must not hold PNGs of this set's names that this run did not write: refused (`ValueError` naming
    one and the count) unless --overwrite, or unless a run of the same set was resumed into the same --png_dir (its
    shard settings record the folder). Read-only, on every process."""
    if png_dir is None:
        return
    if png_dir.exists() and not png_dir.is_dir():
        raise ValueError(f"--png_dir {png_dir} is a file, not a folder; choose another --png_dir.")
    if not png_dir.is_dir() or overwrite:
        return
    existing = sorted(set(png_names(labels)) & set(os.listdir(png_dir)))
    if not existing:
        return
    recorded = read_settings(shards_dir / SHARD_SETTINGS_NAME)
    if changed_settings(recorded, settings) is None and recorded.get("png_dir") == str(png_dir.resolve()):
        return  # the same set resumed: these PNGs are its own (rewritten identically)
    raise ValueError(f"--png_dir {png_dir} already holds {len(existing)} PNG(s) with this set's names (e.g. "
                     f"{png_dir / existing[0]}) that this run did not write; pass --overwrite to replace them, or "
                     f"choose another --png_dir.")


@torch.no_grad()
def sample_shard(pipe, accelerator, indices: range, labels: np.ndarray, seed: int, batch_size: int, sampling: dict,
                 compile_config: bool | None, progress: tqdm) -> np.ndarray:
    """uint8 `(len(indices), H, W, 3)` images of the global `indices`, in batches of `batch_size`."""
    images = []
    extra = {} if compile_config is None else {"compile_config": compile_config}
    for start in range(indices.start, indices.stop, batch_size):
        batch = range(start, min(start + batch_size, indices.stop))
        with accelerator.autocast():
            output = pipe(labels[batch.start:batch.stop].tolist(), generator=image_generators(seed, batch),
                          output_type="np", **call_arguments(pipe, sampling), **extra)
        images.append(images_to_uint8_rgb(np.asarray(output.images)))
        progress.update(len(batch))
    return np.concatenate(images)


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: range) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for image, label, index in zip(images, labels, indices):
        Image.fromarray(image).save(folder / f"{index:06d}_{label}.png")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.time()
    accelerator = Accelerator()
    pipe = load_pipeline(args.pipeline).to(accelerator.device)
    classes = resolve_classes(pipe, args.classes)
    sampling = sampling_arguments(pipe, args)
    settings = set_settings(args, pipe, classes, sampling, accelerator.mixed_precision)
    output = Path(args.output)
    shards_dir = output.with_name(output.stem + ".shards")
    done, stale = check_output(output, shards_dir, settings, args.overwrite)  # on every process, before any change
    if done:
        accelerator.print(f"{output} is complete ({settings['num_samples']} images, same settings): nothing to do")
        accelerator.end_training()
        return
    labels = class_balanced_labels(classes, args.samples_per_class)
    png_dir = None if args.png_dir is None else Path(args.png_dir)
    check_png_dir(png_dir, labels, shards_dir, settings, args.overwrite)
    shards = shard_ranges(len(labels), args.shard_size)
    paths = [shard_path(shards_dir, index) for index in range(len(shards))]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in stale:  # files this script wrote (check_output lists no folder and nothing of a user's)
            print(f"--overwrite: deleting {path} (sampled with other settings)", file=sys.stderr)
            path.unlink(missing_ok=True)
        shards_dir.mkdir(parents=True, exist_ok=True)
        # the PNG folder is recorded (not compared): a resumed run may rewrite the PNGs it wrote there
        write_json_atomic(shards_dir / SHARD_SETTINGS_NAME,
                          {**settings, "png_dir": None if png_dir is None else str(png_dir.resolve())})
        # a truncated / zero-byte / damaged shard (a full disk, a copy cut short) is deleted here, before any process
        # lists the missing shards below, so it is sampled again like a missing one
        remove_damaged_shards(paths, shards, labels, warn=lambda message: print(f"sample: {message}", file=sys.stderr))
    accelerator.wait_for_everyone()

    mine = [index for index in range(accelerator.process_index, len(shards), accelerator.num_processes)
            if not paths[index].exists()]
    compile_config = True if args.compile else None
    progress = tqdm(total=sum(len(shards[index]) for index in mine), unit="img",
                    disable=not accelerator.is_main_process, desc=f"sampling (rank 0 of {accelerator.num_processes})")
    for index in mine:
        began = time.time()
        images = sample_shard(pipe, accelerator, shards[index], labels, args.seed, args.batch_size, sampling,
                              compile_config, progress)
        if png_dir is not None:  # before the shard: a finished shard always has its PNGs
            write_pngs(png_dir, images, labels[shards[index].start:shards[index].stop], shards[index])
        write_shard(paths[index], images, labels[shards[index].start:shards[index].stop],
                    np.arange(shards[index].start, shards[index].stop), time.time() - began)
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        merged = merge_shards(paths, output, labels)
        record = {**settings, "output": str(output.resolve()), "num_processes": accelerator.num_processes,
                  "batch_size": args.batch_size, "device": str(accelerator.device),
                  "sampling_seconds": round(merged["seconds"], 2),
                  "wall_seconds_last_run": round(time.time() - started, 2), "image_shape": merged["image_shape"],
                  "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if argv is None else argv,
                  "versions": versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        write_json_atomic(output.with_suffix(".json"), record)
        if not args.keep_shards:  # this script's files only: anything else put there stays, with the folder
            kept = remove_our_shard_files(shards_dir)
            if kept:
                print(f"sample: kept {shards_dir}: it also holds {len(kept)} file(s) this script did not write "
                      f"({', '.join(path.name for path in kept[:5])})", file=sys.stderr)
        print(f"wrote {output} ({merged['num_images']} images {tuple(merged['image_shape'])}, "
              f"{len(classes)} classes x {args.samples_per_class}) and {output.with_suffix('.json')}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    import spectralar_hf

    return {"spectralar_hf": spectralar_hf.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "diffusers": diffusers.__version__}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # bad input, a missing or unreadable file: one line, exit 2
        print(f"sample: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
