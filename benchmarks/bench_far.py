"""FAR sampling speed on this CPU (issue 7 section 8), every ratio measured in the same run:

1. FAR with 10 outer (frequency) steps against the SAME network run MAR-style: 64 masked-generation steps in a
   random token order with MAR's cosine schedule, the head sampling only the tokens chosen at each step with 100
   inner steps (MAR's defaults). The network was not trained for that order, so this compares time, not quality.
2. Frequency-aware inner steps (linear 40 -> 100 over the outer steps, FAR section 4.3) against a constant 100: total
   sampling time and the diffusion head's share (sampling time minus the transformer's forward passes).
3. Images/s of the whole `FARPipeline` (transformer + head + VAE decode) with and without CFG.
4. (`--far_b_batches 1 64`) FAR-B at ImageNet size (the `far-b` preset: the architecture `conversion/convert_far.py`
   produces from the official FAR-B checkpoint; random weights, which do not change the cost): the latency of one
   outer step with CFG = one transformer pass over the 2B conditional and null-class rows + T_s inner steps of the
   head over all 2B x 256 tokens. The transformer pass and one inner step are timed; the outer step and the whole
   10-step sampling (inner steps 40 -> 100 linear, 700 in all) are composed from them, beside the paper's Table 3
   (FAR-H, batch 1, 10 steps: 1.81 s on one H20 GPU).

Run: `python benchmarks/bench_far.py [--pipeline DIR] [--batch_sizes 1 16]` (default: random `small` preset on
8 x 8 x 4 latents with a random `fmnist-f4`-shaped VAE; with --pipeline, a saved FARPipeline such as
`checkpoints/far-fashion-mnist`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table, time_call  # noqa: E402

from spectralar_hf import FARConfig, FARPipeline, FARTransformer  # noqa: E402
from spectralar_hf.models.far import build_noise_scheduler  # noqa: E402
from spectralar_hf.spectral import far_diffusion_steps  # noqa: E402

MAR_STEPS = 64
MAR_DIFFUSION_STEPS = 100


def random_pipeline(preset: str) -> FARPipeline:
    torch.manual_seed(0)
    transformer = FARTransformer(FARConfig.from_preset(preset)).eval()
    config = transformer.config
    vae = AutoencoderKL(in_channels=1, out_channels=1, sample_size=config.latent_size * 4,
                        block_out_channels=[32, 64, 128], down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1,
                        latent_channels=config.latent_channels).eval()
    return FARPipeline(vae=vae, transformer=transformer, scheduler=build_noise_scheduler(config))


@torch.no_grad()
def sample_mar_style(model: FARTransformer, labels: torch.Tensor, scheduler: DDPMScheduler, guidance_scale: float,
                     generator: torch.Generator, num_steps: int = MAR_STEPS,
                     diffusion_steps: int = MAR_DIFFUSION_STEPS) -> torch.Tensor:
    """MAR's sampling loop on FAR's network: random order, cosine schedule of masked tokens, the head samples the
    tokens revealed at each step. Returns `(B, L, token_dim)` tokens."""
    config = model.config
    batch, length = labels.shape[0], config.num_tokens
    use_cfg = guidance_scale != 1.0
    rows = torch.cat([labels, torch.full_like(labels, config.null_class_id)]) if use_cfg else labels
    tokens = torch.zeros(batch, length, config.token_dim)
    mask = torch.ones(batch, length, dtype=torch.bool)
    order = torch.rand(batch, length, generator=generator).argsort(dim=1)
    level = config.num_levels - 1  # the head's level embedding needs a value; it does not change the cost
    for step in range(num_steps):
        remaining = math.floor(length * math.cos(math.pi / 2 * (step + 1) / num_steps))
        remaining = max(0, min(int(mask[0].sum()) - 1, remaining))
        next_mask = torch.zeros_like(mask)
        next_mask.scatter_(1, order[:, :remaining], True)
        revealed = mask & ~next_mask  # the same count in every row
        inputs, input_mask = (torch.cat([tokens, tokens]), torch.cat([mask, mask])) if use_cfg else (tokens, mask)
        condition = model.conditions(inputs, rows, input_mask)
        chosen = torch.cat([revealed, revealed]) if use_cfg else revealed
        picked = condition[chosen].view(condition.shape[0], -1, condition.shape[-1])
        sampled = model._sample_tokens(picked, level, diffusion_steps, guidance_scale, 1.0, scheduler, generator,
                                       guided=use_cfg)
        tokens[revealed] = sampled.reshape(-1, config.token_dim)
        mask = next_mask
    return tokens


def transformer_time(model: FARTransformer, labels: torch.Tensor, num_steps: int, guidance_scale: float,
                     repeats: int) -> float:
    """Seconds of the transformer's forward passes alone in a FAR sampling run (no mask: every input visible)."""
    config = model.config
    rows = labels.shape[0] * (2 if guidance_scale != 1.0 else 1)
    tokens = torch.zeros(rows, config.num_tokens, config.token_dim)
    classes = torch.zeros(rows, dtype=torch.long)

    @torch.no_grad()
    def run() -> None:
        for _ in range(num_steps):
            model.conditions(tokens, classes)
    return time_call(run, repeats)


@torch.no_grad()
def far_b_latency(batches: list[int], guidance_scale: float, repeats: int) -> None:
    """Section 4: FAR-B outer-step latency composed from a timed transformer pass and a timed head inner step."""
    torch.manual_seed(0)
    model = FARTransformer(FARConfig.from_preset("far-b")).eval()
    config = model.config
    steps = far_diffusion_steps(config.num_inference_steps)  # 40 -> 100 over the 10 outer steps
    parameters = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine_line()}\n\n### 4. FAR-B outer-step latency (far-b preset, {parameters / 1e6:.0f}M "
          f"parameters, random weights; CFG {guidance_scale:g}: 2B rows; {config.num_tokens} tokens; head "
          f"{config.head_depth} x {config.head_width})\n")
    rows = []
    for batch in batches:
        labels = torch.arange(batch) % config.num_classes
        rows_labels = torch.cat([labels, torch.full_like(labels, config.null_class_id)])
        tokens = torch.randn(2 * batch, config.num_tokens, config.token_dim)
        warmup = 1 if batch <= 8 else 0  # a large batch is its own warm-up (one pass takes minutes on a CPU)
        transformer_s = time_call(lambda: model.conditions(tokens, rows_labels), repeats, warmup)
        condition = model.conditions(tokens, rows_labels).reshape(-1, config.hidden_size)
        head = model.diffusion_head
        condition_embedding = head.embed_condition(condition, torch.full((condition.shape[0],), 5))
        time_embedding = head.embed_time(torch.tensor([500]), condition.dtype)
        x = torch.randn(condition.shape[0], config.token_dim)
        inner_s = time_call(lambda: head.denoise(x, time_embedding, condition_embedding), repeats, warmup)
        outer = {t: transformer_s + t * inner_s for t in (40, 70, 100)}
        total = config.num_inference_steps * transformer_s + sum(steps) * inner_s
        rows.append([batch, f"{transformer_s * 1e3:.0f}", f"{inner_s * 1e3:.1f}",
                     *(f"{outer[t]:.2f}" for t in (40, 70, 100)), f"{total:.1f}", f"{batch / total:.3f}"])
    print(markdown_table(["batch", "transformer pass ms", "head inner step ms", "outer step s (T_s 40)",
                          "outer step s (T_s 70)", "outer step s (T_s 100)",
                          f"{config.num_inference_steps} steps s (40 -> 100)", "images/s"], rows))
    print("\npaper, Table 3 (FAR-H 812M, batch 1, 10 steps, one H20 GPU): 1.81 s\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="a saved FARPipeline directory")
    parser.add_argument("--preset", default="small", help="FARConfig preset when no --pipeline is given")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="CFG scale of the CFG rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--far_b_batches", type=int, nargs="*", default=[],
                        help="also time FAR-B outer steps at these batch sizes (section 4), e.g. 1 64")
    parser.add_argument("--skip_small", action="store_true", help="only section 4")
    args = parser.parse_args()
    if args.far_b_batches:
        far_b_latency(args.far_b_batches, args.guidance_scale, args.repeats)
    if args.skip_small:
        return
    pipe = FARPipeline.from_pretrained(args.pipeline) if args.pipeline else random_pipeline(args.preset)
    pipe.set_progress_bar_config(disable=True)
    model, scheduler = pipe.transformer.eval(), pipe.scheduler
    config = model.config
    outer = min(10, config.num_levels)
    name = args.pipeline or f"random {args.preset} preset"
    print(f"machine: {machine_line()}\n\nmodel: {name}: {config.num_tokens} tokens of {config.token_dim} values, "
          f"F = {config.num_levels}, hidden {config.hidden_size}, {config.encoder_layers}+{config.decoder_layers} "
          f"blocks, head {config.head_depth} x {config.head_width}\n")

    steps_rows, inner_rows, pipe_rows = [], [], []
    for batch in args.batch_sizes:
        labels = torch.arange(batch) % config.num_classes
        for guidance in (1.0, args.guidance_scale):
            cfg = "no CFG" if guidance == 1.0 else f"CFG {guidance:g}"
            seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            far = lambda steps: (lambda: model.sample(labels, num_steps=outer, diffusion_steps=steps,  # noqa: E731
                                                      guidance_scale=guidance, scheduler=scheduler,
                                                      generator=seed()))
            far_linear_s = time_call(far("linear"), args.repeats)
            far_constant_s = time_call(far(MAR_DIFFUSION_STEPS), args.repeats)
            mar_s = time_call(lambda: sample_mar_style(model, labels, scheduler, guidance, seed()), 1, warmup=0)
            steps_rows.append([batch, cfg, f"{far_linear_s * 1e3:.0f}", f"{mar_s * 1e3:.0f}",
                               f"{mar_s / far_linear_s:.2f}x"])
            backbone_s = transformer_time(model, labels, outer, guidance, args.repeats)
            head_linear, head_constant = far_linear_s - backbone_s, far_constant_s - backbone_s
            inner_rows.append([batch, cfg, f"{far_linear_s * 1e3:.0f}", f"{far_constant_s * 1e3:.0f}",
                               f"{1 - far_linear_s / far_constant_s:.1%}", f"{head_linear * 1e3:.0f}",
                               f"{head_constant * 1e3:.0f}", f"{1 - head_linear / head_constant:.1%}"])
            start = time.perf_counter()
            pipe(labels, guidance_scale=guidance, output_type="pt", generator=seed())
            pipe_s = time.perf_counter() - start
            pipe_rows.append([batch, cfg, f"{pipe_s * 1e3:.0f}", f"{batch / pipe_s:.2f}"])

    print(f"### 1. FAR {outer} outer steps (inner: linear 40 -> 100) vs the same network MAR-style "
          f"({MAR_STEPS} steps, {MAR_DIFFUSION_STEPS} inner)\n")
    print(markdown_table(["batch", "guidance", "FAR ms", "MAR-style ms", "MAR / FAR"], steps_rows))
    print(f"\n### 2. frequency-aware inner steps (linear 40 -> 100) vs constant {MAR_DIFFUSION_STEPS}, "
          f"{outer} outer steps\n")
    print(markdown_table(["batch", "guidance", "linear ms", "constant ms", "saved", "head linear ms",
                          "head constant ms", "head time saved"], inner_rows))
    print(f"\n### 3. FARPipeline throughput (the pipeline's sampling defaults: {config.num_inference_steps} outer "
          f"steps, inner steps {config.diffusion_steps!r}; VAE decode included)\n")
    print(markdown_table(["batch", "guidance", "pipeline ms", "images/s"], pipe_rows))


if __name__ == "__main__":
    main()
