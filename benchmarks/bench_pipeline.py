"""Pipeline throughput on this CPU: images/s at batch 16 with and without CFG, split into generator (sampling the
codes) and decoder (tokenizer decode) time.

Run: `python benchmarks/bench_pipeline.py [--pipeline DIR]` (default: random small presets; with --pipeline, a saved
SpectralARPipeline such as the shipped demo checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table, time_call  # noqa: E402

from spectralar_hf import (  # noqa: E402
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)


def small_pipeline() -> SpectralARPipeline:
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("small-32-gray")).eval()
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("small")).eval()
    return SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="a saved SpectralARPipeline directory")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = SpectralARPipeline.from_pretrained(args.pipeline) if args.pipeline else small_pipeline()
    pipe.set_progress_bar_config(disable=True)
    name = args.pipeline or "random small-32-gray tokenizer + small generator"
    labels = torch.arange(args.batch_size) % pipe.transformer.config.num_classes
    rows = []
    for guidance in (1.0, 2.0):
        sampling = lambda: pipe.transformer.sample(labels, guidance_scale=guidance,  # noqa: E731
                                                   generator=torch.Generator().manual_seed(0))
        codes = sampling()
        generator_s = time_call(sampling, args.repeats)
        decoder_s = time_call(lambda: pipe.tokenizer.decode(codes), args.repeats)
        total_s = time_call(lambda: pipe(labels, guidance_scale=guidance, output_type="pt",
                                         generator=torch.Generator().manual_seed(0)), args.repeats)
        rows.append(["no CFG" if guidance == 1.0 else f"CFG {guidance}", f"{generator_s * 1e3:.0f}",
                     f"{decoder_s * 1e3:.0f}", f"{total_s * 1e3:.0f}", f"{args.batch_size / total_s:.1f}"])
    print(f"machine: {machine_line()}\n\npipeline: {name}, batch {args.batch_size}\n")
    print(markdown_table(["guidance", "generator ms", "decoder ms", "pipeline ms", "images/s"], rows))


if __name__ == "__main__":
    main()
