"""Speed of the SpectralAR generator (same-run ratios on this machine).

1. Cached vs uncached sampling, 64 tokens, batch 16 (target >= 5x).
2. Ours vs transformers `GPT2LMHeadModel.generate` of the same width / depth / vocabulary, cached, with CFG through
   its `guidance_scale` + `negative_prompt_ids` (target: >= 1.2x faster with CFG, no slower without).
3. -p4 vs -p1 at equal size, 64 tokens, batch 1 and 16 (target >= 2.5x; the paper: 0.4 vs 1).
4. Achieved FLOP/s of sampling at batch 64, eager and compiled (`compile_config=True`), against this machine's
   float32 matmul FLOP/s measured in the same run (target >= 40%).
5. Training throughput (tokens/s) of a small preset.

Run: `python benchmarks/bench_generator.py [--sizes small base] [--quick]`. The script re-runs itself with glibc's
malloc trim / mmap thresholds fixed (`MALLOC_SETTINGS`; `--system_malloc` keeps the defaults): with the defaults,
the large blocks freed by the uncached and GPT-2 sections raise glibc's dynamic thresholds, after which every
mid-sized activation comes from freshly faulted pages and the later sections' GEMMs run up to 30% slower (PyTorch's
CPU performance guide recommends jemalloc / tcmalloc for the same reason).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table, time_call  # noqa: E402

from spectralar_hf import SpectralARConfig, SpectralARForCausalLM  # noqa: E402

MALLOC_SETTINGS = {"MALLOC_TRIM_THRESHOLD_": "2000000000", "MALLOC_MMAP_THRESHOLD_": "2000000000"}
# Benchmark sizes: 64 tokens as in the paper; widths that fit a CPU.
SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4),
    "base": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8),
    "d16": dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16),
}


def build(size: str, tokens_per_step: int = 1, vocab: int = 4096) -> SpectralARForCausalLM:
    torch.manual_seed(0)
    config = SpectralARConfig(vocab_size=vocab, num_image_tokens=64, num_classes=1000,
                              tokens_per_step=tokens_per_step, **SIZES[size])
    return SpectralARForCausalLM(config).eval()


@torch.no_grad()
def sample_uncached(model: SpectralARForCausalLM, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The reference without a KV cache: re-run the whole prefix for every token."""
    codes = torch.zeros(labels.shape[0], 0, dtype=torch.long)
    while codes.shape[1] < model.config.num_image_tokens:
        logits = model(input_ids=codes, class_labels=labels, use_cache=False).logits[:, codes.shape[1]]
        next_code = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        codes = torch.cat([codes, next_code], dim=1)
    return codes


def gpt2_like(model: SpectralARForCausalLM) -> GPT2LMHeadModel:
    """GPT-2 of the same width / depth / heads; its vocabulary holds the codes plus one prompt token per class."""
    config = model.config
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=config.vocab_size + config.num_classes + 1, n_positions=config.num_image_tokens + 1,
        n_embd=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    ))
    return gpt2.eval()


def bench_cache(size: str, repeats: int) -> list:
    model = build(size)
    labels = torch.arange(16) % 1000
    cached = time_call(lambda: model.sample(labels, generator=torch.Generator().manual_seed(0)), repeats)
    uncached = time_call(lambda: sample_uncached(model, labels, torch.Generator().manual_seed(0)),
                         max(1, repeats // 2))
    return [size, f"{cached * 1e3:.0f}", f"{uncached * 1e3:.0f}", f"{uncached / cached:.1f}x"]


def bench_vs_gpt2(size: str, repeats: int, batch: int = 16) -> list[list]:
    model = build(size)
    gpt2 = gpt2_like(model)
    labels = torch.arange(batch) % 1000
    offset = model.config.vocab_size
    prompt = (labels + offset).unsqueeze(1)
    null_prompt = torch.full_like(prompt, offset + model.config.num_classes)
    n = model.config.num_image_tokens
    rows = []
    for guidance in (1.0, 2.0):
        ours = time_call(lambda: model.sample(labels, guidance_scale=guidance, top_k=900,
                                              generator=torch.Generator().manual_seed(0)), repeats)
        extra = {} if guidance == 1.0 else dict(guidance_scale=guidance, negative_prompt_ids=null_prompt)
        theirs = time_call(lambda: gpt2.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=True,
                                                 top_k=900, **extra), repeats)
        rows.append([size, "CFG 2.0" if guidance != 1.0 else "no CFG", f"{ours * 1e3:.0f}", f"{theirs * 1e3:.0f}",
                     f"{theirs / ours:.2f}x"])
    return rows


def bench_p4(size: str, repeats: int, batch: int) -> list:
    labels = torch.arange(batch) % 1000
    p1, p4 = build(size, 1), build(size, 4)
    t1 = time_call(lambda: p1.sample(labels, generator=torch.Generator().manual_seed(0)), repeats)
    t4 = time_call(lambda: p4.sample(labels, generator=torch.Generator().manual_seed(0)), repeats)
    return [size, str(batch), f"{t1 * 1e3:.0f}", f"{t4 * 1e3:.0f}", f"{t1 / t4:.2f}x"]


def matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / time_call(lambda: a @ b, repeats)


def sampling_flops(config: SpectralARConfig, batch: int, guidance: bool) -> float:
    """Multiply-add FLOPs of `sample()`: blocks, attention over the cache, AdaLN once per row, head."""
    width, layers, n, k = config.hidden_size, config.num_hidden_layers, config.num_image_tokens, config.tokens_per_step
    rows = batch * (2 if guidance else 1)
    per_token = layers * 2 * 12 * width**2 + 2 * width * config.vocab_size
    attention = sum(layers * 4 * width * (step + 1) * k * k for step in range(n // k))  # queries x keys x width
    adaln = layers * 2 * 6 * width**2 + 2 * 2 * width**2
    return rows * (n * per_token + attention + adaln)


def bench_flops(size: str, repeats: int, batch: int = 64) -> list[list]:
    """Eager and compiled sampling (the first compiled call, which compiles, is the warm-up of `time_call`)."""
    model = build(size)
    labels = torch.arange(batch) % 1000
    peak = matmul_flops()
    rows = []
    for mode, compile_config in (("eager", False), ("compiled", True)):
        seconds = time_call(lambda: model.sample(labels, generator=torch.Generator().manual_seed(0),
                                                 compile_config=compile_config), repeats)
        achieved = sampling_flops(model.config, batch, guidance=False) / seconds
        rows.append([size, mode, f"{seconds * 1e3:.0f}", f"{achieved / 1e9:.1f}", f"{peak / 1e9:.1f}",
                     f"{achieved / peak:.0%}"])
    return rows


def bench_training(size: str, steps: int = 5, batch: int = 64) -> list:
    model = build(size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    codes = torch.randint(0, model.config.vocab_size, (batch, model.config.num_image_tokens))
    labels = torch.arange(batch) % 1000

    def step():
        loss = model(input_ids=codes, class_labels=labels, labels=codes, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = time_call(step, repeats=steps)
    return [size, str(batch), f"{seconds * 1e3:.0f}", f"{batch * model.config.num_image_tokens / seconds:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=sorted(SIZES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--system_malloc", action="store_true", help="keep glibc's default malloc thresholds")
    args = parser.parse_args()
    if not args.system_malloc and any(os.environ.get(name) != value for name, value in MALLOC_SETTINGS.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_SETTINGS})
    transformers_logging.set_verbosity_error()
    repeats = 2 if args.quick else 3
    malloc = "glibc defaults" if args.system_malloc else ", ".join(f"{k}={v}" for k, v in MALLOC_SETTINGS.items())
    print(f"machine: {machine_line()}\nmalloc: {malloc}\n")
    print("### 1. KV cache: cached vs uncached sampling (64 tokens, batch 16)\n")
    print(markdown_table(["size", "cached ms", "uncached ms", "speed-up"],
                         [bench_cache(size, repeats) for size in args.sizes]) + "\n")
    print("### 2. ours vs GPT2LMHeadModel.generate (same width/depth/vocab, 64 tokens, batch 16, top-k 900)\n")
    rows = [row for size in args.sizes for row in bench_vs_gpt2(size, repeats)]
    print(markdown_table(["size", "guidance", "ours ms", "GPT-2 generate ms", "ours faster by"], rows) + "\n")
    print("### 3. -p4 vs -p1 (64 tokens, eager)\n")
    print(markdown_table(["size", "batch", "p1 ms", "p4 ms", "p4 faster by"],
                         [bench_p4(size, repeats, batch) for size in args.sizes for batch in (1, 16)]) + "\n")
    print("### 4. achieved FLOP/s of sampling (batch 64, no CFG) vs float32 matmul FLOP/s (2048^2 GEMM)\n")
    print(markdown_table(["size", "sampling", "sample ms", "achieved GFLOP/s", "matmul GFLOP/s", "fraction"],
                         [row for size in args.sizes for row in bench_flops(size, repeats)]) + "\n")
    print("### 5. training throughput (forward + backward + AdamW)\n")
    print(markdown_table(["size", "batch", "step ms", "tokens/s"], [bench_training(size) for size in args.sizes]))


if __name__ == "__main__":
    main()
