"""Speed of the spectral core and the tokenizer (issue: tokenizer benchmarks).

1. `dct_2d` against `scipy.fft.dctn` on (64, 3, 256, 256) float32 (target: time ratio <= 1.0).
2. Nested-target construction as a share of one training step (forward + backward + AdamW step), `titok-b64`,
   batch 8 (target <= 5%).
3. Per-sample prefix decode of B = 16 samples in one batch against a loop over samples (target >= 8x).
4. Training throughput (images/s, forward + backward + AdamW) of small presets, with the nested-target share.

Run: `python benchmarks/bench_tokenizer.py [--quick]`; prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.fft
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table, time_call  # noqa: E402

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig  # noqa: E402
from spectralar_hf.spectral import dct_2d, spectral_target  # noqa: E402


def bench_dct(repeats: int) -> str:
    x = torch.randn(64, 3, 256, 256)
    array = x.numpy()
    ours = time_call(lambda: dct_2d(x), repeats)
    scipy_1 = time_call(lambda: scipy.fft.dctn(array, type=2, norm="ortho", axes=(-2, -1)), repeats)
    threads = torch.get_num_threads()
    scipy_n = time_call(lambda: scipy.fft.dctn(array, type=2, norm="ortho", axes=(-2, -1), workers=threads), repeats)
    error = np.abs(dct_2d(x).numpy() - scipy.fft.dctn(array, norm="ortho", axes=(-2, -1))).max()
    rows = [
        ["spectralar_hf dct_2d (cached basis matmuls)", f"{ours * 1e3:.1f}", "1.00", f"{error:.1e}"],
        ["scipy.fft.dctn (1 worker)", f"{scipy_1 * 1e3:.1f}", f"{ours / scipy_1:.2f}", "-"],
        [f"scipy.fft.dctn ({threads} workers)", f"{scipy_n * 1e3:.1f}", f"{ours / scipy_n:.2f}", "-"],
    ]
    return markdown_table(["(64, 3, 256, 256) float32", "ms", "ours / this", "max abs diff"], rows)


def bench_nested_targets(repeats: int, batch: int = 8) -> str:
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("titok-b64")
    model = SpectralTokenizer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, 256, 256) * 2 - 1
    prefix = torch.randint(1, config.num_latent_tokens + 1, (batch,), generator=torch.Generator().manual_seed(0))

    def step():
        loss = model(images, num_tokens=prefix).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_time = time_call(step, repeats=max(2, repeats // 2), warmup=1)
    target_time = time_call(lambda: spectral_target(images, config.omega, prefix), repeats=repeats * 4)
    rows = [
        ["training step (forward + backward + AdamW)", f"{step_time * 1e3:.0f}", "100%"],
        ["nested targets lowpass(x, omega_k) per sample", f"{target_time * 1e3:.2f}",
         f"{100 * target_time / step_time:.3f}%"],
    ]
    return markdown_table([f"titok-b64, batch {batch}, 256 px", "ms", "share"], rows)


@torch.no_grad()
def bench_prefix_decode(presets: list[str], repeats: int, batch: int = 16) -> str:
    rows = []
    for name in presets:
        torch.manual_seed(0)
        config = SpectralTokenizerConfig.from_preset(name)
        model = SpectralTokenizer(config).eval()
        codes = torch.randint(0, config.codebook_size, (batch, config.num_latent_tokens))
        prefix = torch.randint(1, config.num_latent_tokens + 1, (batch,), generator=torch.Generator().manual_seed(0))
        batched = time_call(lambda: model.decode(codes, prefix), repeats)
        looped = time_call(lambda: [model.decode(codes[i : i + 1], int(prefix[i])) for i in range(batch)], repeats)
        rows.append([name, f"{batched * 1e3:.1f}", f"{looped * 1e3:.1f}", f"{looped / batched:.1f}x"])
    return markdown_table([f"preset (B = {batch}, random prefixes)", "one batch ms", "loop ms", "speed-up"], rows)


def bench_training(presets: list[str], repeats: int, batch: int = 32) -> str:
    rows = []
    for name in presets:
        torch.manual_seed(0)
        config = SpectralTokenizerConfig.from_preset(name)
        model = SpectralTokenizer(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.rand(batch, config.num_channels, config.image_size, config.image_size) * 2 - 1
        prefix = torch.randint(1, config.num_latent_tokens + 1, (batch,), generator=torch.Generator().manual_seed(0))

        def step():
            loss = model(images, num_tokens=prefix).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = time_call(step, repeats)
        targets = time_call(lambda: spectral_target(images, config.omega, prefix), repeats * 4)
        rows.append([name, str(batch), f"{seconds * 1e3:.0f}", f"{batch / seconds:.0f}",
                     f"{100 * targets / seconds:.2f}%"])
    return markdown_table(["preset", "batch", "step ms", "images/s", "nested-target share"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip the titok-b64 rows")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    print(f"machine: {machine_line()}\n")
    print("### dct_2d vs scipy\n")
    print(bench_dct(repeats) + "\n")
    if not args.quick:
        print("### nested-target share of a training step\n")
        print(bench_nested_targets(repeats=4) + "\n")
    presets = ["tiny-32", "small-32-gray", "small-64"] + ([] if args.quick else ["titok-b64"])
    print("### per-sample prefix decode: one batch vs a loop over samples\n")
    print(bench_prefix_decode(presets, repeats) + "\n")
    print("### training throughput (forward + backward + AdamW)\n")
    print(bench_training(["fmnist-32", "small-32-gray", "small-64"], repeats) + "\n")


if __name__ == "__main__":
    main()
