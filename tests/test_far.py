"""FAR (next-frequency prediction with continuous latents, FAR §4-5): the two frequency filters, the frequency-aware
schedules, the training step (DMS target, FTL weight, label dropout, frequency-aware mask), the outer/inner sampling
loops and CFG, FARPipeline with a tiny diffusers VAE (determinism, outputs, intermediates, callbacks, save/load), a tiny
FAR that learns a toy latent distribution, and bad inputs.

Everything is tiny (2-channel 4x4 latents unless said otherwise) and runs on one CPU thread: with tensors this small,
thread hand-offs cost more than they save.
"""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from PIL import Image
from transformers import AutoModel

from spectralar_hf import FARConfig, FARPipeline, FARTransformer, build_noise_scheduler
from spectralar_hf.spectral import (
    far_diffusion_steps,
    far_level_schedule,
    far_loss_weight,
    far_mask_ratio_range,
    frequency_filter,
)

NAMES = ["circle", "square"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides) -> FARConfig:
    values = dict(latent_channels=2, latent_size=4, num_classes=5, class_buffer_size=2, hidden_size=32,
                  encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=32,
                  diffusion_batch_mul=2)
    values.update(overrides)
    return FARConfig(**values)


def spread(model: FARTransformer, std: float = 0.1) -> FARTransformer:
    """Random non-zero weights everywhere (the head's AdaLN and output layers start at zero: eps = 0 for any input)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Filters (§5.1: type (a) down/up-sampling, Eq. 3; type (b) Fourier square mask, Eq. 4)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["downsample", "fourier"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 6, 10)])
def test_filter_level_zero_is_blank_and_level_f_is_identity(kind, shape):
    x = torch.randn(*shape, generator=seeded())
    levels = min(shape[-2:])
    assert torch.equal(frequency_filter(x, levels, kind=kind), x)
    assert torch.equal(frequency_filter(x, 0, kind=kind), torch.zeros_like(x))
    assert 0 < frequency_filter(x, 1, kind=kind).abs().max() and not torch.allclose(
        frequency_filter(x, levels - 1, kind=kind), x)
    # per-sample levels give, row by row, the single-level filter
    per_sample = torch.tensor([levels - 1, 2] if shape[0] == 2 else [3])
    mixed = frequency_filter(x, per_sample, kind=kind)
    for row, level in enumerate(per_sample.tolist()):
        assert torch.allclose(mixed[row], frequency_filter(x[row : row + 1], level, kind=kind)[0], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 6, 10), (1, 1, 16, 16), (1, 1, 7, 7)])
def test_downsample_filter_is_area_down_then_bicubic_up(shape):
    """Type (a): down-sample to ceil(H i / F) x ceil(W i / F) (area), up-sample back (bicubic), F = min(H, W)."""
    x = torch.randn(*shape, dtype=torch.float64, generator=seeded(1))
    height, width = shape[-2:]
    levels = min(height, width)
    for level in range(1, levels):
        size = (math.ceil(Fraction(height * level, levels)), math.ceil(Fraction(width * level, levels)))
        small = F.interpolate(x, size=size, mode="area")
        expected = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
        assert torch.allclose(frequency_filter(x, level), expected, atol=1e-12), level
    # the default kind is type (a), the paper's default
    assert torch.equal(frequency_filter(x, 2), frequency_filter(x, 2, kind="downsample"))


@pytest.mark.parametrize("size", [8, 7, 16])
def test_fourier_filter_keeps_exactly_the_square_around_dc(size):
    """Type (b), Eq. 4: the output's 2D DFT equals the input's where max(|u|, |v|) <= i / 2 and is zero elsewhere."""
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=seeded(2))
    spectrum = torch.fft.fft2(x)
    frequency = torch.fft.fftfreq(size, d=1.0 / size).abs()  # integer |u|, DC at index 0
    radius = torch.maximum(frequency[:, None], frequency[None, :])
    for level in range(1, size + 1):  # level 0 is the blank input (zeros), not Eq. 4's DC-only mask
        output = frequency_filter(x, level, kind="fourier")
        assert output.dtype == x.dtype and output.shape == x.shape
        inside = radius <= level / 2
        filtered = torch.fft.fft2(output)
        assert torch.allclose(filtered[..., inside], spectrum[..., inside], atol=1e-9), level
        assert bool((filtered[..., ~inside].abs() < 1e-9).all()), level


def test_fourier_filter_energy_grows_with_level():
    """Type (b) is a chain of nested orthogonal projections: the energy never decreases with the level.

    Type (a) has no such guarantee, so none is asserted for it: area down-sampling to a size that does not divide H
    (16 -> 9, overlapping windows) smooths more than to the divisor below it (16 -> 8), and bicubic up-sampling can
    overshoot, so its output energy dips at some levels even for smooth latents (a property of Eq. 3 with these
    modes; `test_downsample_filter_is_area_down_then_bicubic_up` pins the filter itself)."""
    for shape in [(2, 3, 8, 8), (1, 2, 6, 10), (1, 4, 16, 16)]:
        x = torch.randn(*shape, dtype=torch.float64, generator=seeded(3))
        energies = [frequency_filter(x, level, kind="fourier").pow(2).sum().item()
                    for level in range(min(shape[-2:]) + 1)]
        assert energies[0] == 0.0 and energies[-1] == pytest.approx(x.pow(2).sum().item())
        assert all(b >= a - 1e-9 for a, b in zip(energies, energies[1:])), energies


def test_filter_rejects_bad_inputs():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="kind must be one of"):
        frequency_filter(x, 2, kind="wavelet")
    for level in (-1, 9):
        with pytest.raises(ValueError, match=r"level must lie in \[0, 8\]"):
            frequency_filter(x, level)
    with pytest.raises(ValueError, match=r"level must lie in \[0, 4\]"):
        frequency_filter(x, 5, num_levels=4)
    with pytest.raises(ValueError, match=r"level must lie in \[0, 8\]"):
        frequency_filter(torch.randn(2, 2, 8, 8), torch.tensor([3, 9]))
    with pytest.raises(ValueError, match="integer levels"):
        frequency_filter(x, torch.tensor([2.0]))
    with pytest.raises(ValueError, match="level must be an int"):
        frequency_filter(x, 2.0)
    with pytest.raises(ValueError, match=r"floating \(B, C, H, W\)"):
        frequency_filter(torch.randn(2, 8, 8), 2)
    with pytest.raises(ValueError, match=r"floating \(B, C, H, W\)"):
        frequency_filter(torch.ones(1, 2, 8, 8, dtype=torch.long), 2)


# ---------------------------------------------------------------------------------------------------------------
# Frequency-aware schedules (§4.3, §5.2)
# ---------------------------------------------------------------------------------------------------------------


def test_far_loss_weight_is_one_plus_sine_of_the_predicted_level():
    """FTL: input level i (0 = blank) weighs 1 + sin(pi/2 * (i + 1)/F), the reference code's list
    `[1 + sin(pi/2 * (b + 1) / F) for b in range(F)]` indexed by the input level."""
    reference = [1 + np.sin(math.pi / 2.0 * (bands + 1) / 16) for bands in range(16)]
    assert [far_loss_weight(level, 16) for level in range(16)] == pytest.approx(reference)
    assert far_loss_weight(0, 16) == pytest.approx(1 + math.sin(math.pi / 32)) and far_loss_weight(15, 16) == 2.0
    assert far_loss_weight(7, 16) == pytest.approx(1 + math.sqrt(0.5))
    tensor = far_loss_weight(torch.tensor([[0, 3], [7, 15]]), 16)
    assert tensor.shape == (2, 2) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.tensor([[1 + math.sin(math.pi / 32), 1 + math.sin(math.pi / 8)],
                                                [1 + math.sqrt(0.5), 2.0]]))


def test_far_mask_ratio_range_falls_linearly_from_0_7_to_0():
    levels = 16
    lows = [far_mask_ratio_range(level, levels)[0] for level in range(levels + 1)]
    highs = {far_mask_ratio_range(level, levels)[1] for level in range(levels + 1)}
    assert highs == {1.0}
    assert lows[0] == pytest.approx(0.7) and lows[levels - 1] == pytest.approx(0.0) and lows[levels] == 0.0
    steps = np.diff(lows[:levels])  # linear over the training input levels 0 .. F-1
    assert np.allclose(steps, -0.7 / (levels - 1))
    low, high = far_mask_ratio_range(torch.arange(levels + 1), levels)
    assert high == 1.0 and torch.allclose(low, torch.tensor(lows, dtype=torch.float32))
    assert far_mask_ratio_range(0, levels, low_level_min=0.5)[0] == pytest.approx(0.5)


def test_far_diffusion_steps_linear_40_to_100_or_constant():
    steps = far_diffusion_steps(10)
    assert steps == [40, 47, 53, 60, 67, 73, 80, 87, 93, 100]
    assert np.mean(steps) == pytest.approx(70.0)  # the paper's average of 70, 30% less than a constant 100
    assert far_diffusion_steps(16)[0] == 40 and far_diffusion_steps(16)[-1] == 100
    assert far_diffusion_steps(5, 100, 100) == [100] * 5  # constant
    assert far_diffusion_steps(1) == [100]
    with pytest.raises(ValueError):
        far_diffusion_steps(0)
    with pytest.raises(ValueError):
        far_diffusion_steps(4, 0, 100)


def test_far_level_schedule_increasing_up_to_f():
    assert far_level_schedule(16, 16) == list(range(1, 17))
    assert far_level_schedule(1, 16) == [16]
    assert far_level_schedule(10, 16) == [1, 3, 4, 6, 8, 9, 11, 12, 14, 16]
    for levels in (4, 7, 16):
        for steps in range(1, levels + 1):
            schedule = far_level_schedule(steps, levels)
            assert len(schedule) == steps and schedule[-1] == levels and schedule[0] >= 1
            assert all(b > a for a, b in zip(schedule, schedule[1:]))
    for bad in (0, 17):
        with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 16\]"):
            far_level_schedule(bad, 16)
    # 10 outer steps by default (at most F)
    assert FARConfig.from_preset("far-b").num_inference_steps == 10
    assert FARConfig.from_preset("tiny").num_inference_steps == 8  # F = 8 < 10
    with pytest.raises(ValueError, match="num_inference_steps"):
        FARConfig.from_preset("far-b", num_inference_steps=17)


# ---------------------------------------------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------------------------------------------


def test_head_is_trained_on_the_full_latent_with_the_ftl_weight():
    """DMS: recompute the step's loss from its random draws (same generator) with the FULL latent as x_0; it equals
    the model's loss, and the next-level latent x_{i+1} as x_0 gives a different one. Then FTL: each sample's loss is
    multiplied by 1 + sin(pi/2 * (i + 1)/F) for input level i."""
    config = tiny_config(use_mask=False)
    model = spread(FARTransformer(config)).eval()  # eval: no label dropout, so no random draw for it
    latents = torch.randn(3, 2, 4, 4, generator=seeded(5)) * 2 + 1
    labels, levels = torch.tensor([0, 4, 2]), torch.tensor([0, 1, 3])
    out = model(latents, labels, levels=levels, generator=seeded(7))
    assert torch.equal(out.target, latents) and torch.equal(out.levels, levels)
    assert torch.equal(out.inputs, frequency_filter(latents, levels, 4))

    scheduler = build_noise_scheduler(config)
    batch, length, repeat = 3, config.num_tokens, config.diffusion_batch_mul

    def recompute(x0_latents):
        generator = seeded(7)
        with torch.no_grad():
            condition = model.conditions(model.patchify(frequency_filter(latents, levels, 4)), labels)
            x0 = model.patchify(x0_latents).reshape(batch * length, -1).repeat(repeat, 1)
            timesteps = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = scheduler.add_noise(x0, noise, timesteps)
            eps, raw = model.diffusion_head(x_t, timesteps, condition.reshape(batch * length, -1).repeat(repeat, 1),
                                            levels.repeat_interleave(length).repeat(repeat)).chunk(2, dim=-1)
            mse = (noise - eps).pow(2).mean(dim=-1)
            vb = model._variational_bound(x0, x_t, timesteps, eps, raw)
        return mse.mean(), (mse + vb).view(repeat, batch, length).mean(dim=(0, 2))

    mse, per_sample = recompute(latents)
    assert torch.allclose(out.mse_loss, mse, atol=1e-6)
    assert torch.allclose(out.sample_losses, per_sample, atol=1e-6)
    next_level_mse, next_level = recompute(frequency_filter(latents, levels + 1, 4))
    assert not torch.allclose(out.sample_losses, next_level, atol=1e-3)
    assert not torch.allclose(out.mse_loss, next_level_mse, atol=1e-4)

    weights = 1 + torch.sin(math.pi / 2 * (levels.float() + 1) / 4)  # the reference code's (b + 1) / F indexing
    assert torch.allclose(out.loss_weights, weights)
    assert torch.allclose(out.loss, (weights * per_sample).mean(), atol=1e-6)
    plain = FARTransformer(tiny_config(use_mask=False, loss_weighting=False)).eval()
    plain.load_state_dict(model.state_dict())
    unweighted = plain(latents, labels, levels=levels, generator=seeded(7))
    assert torch.allclose(unweighted.sample_losses, out.sample_losses)
    assert torch.equal(unweighted.loss_weights, torch.ones(3))
    assert torch.allclose(unweighted.loss, per_sample.mean(), atol=1e-6)
    out.loss.backward()
    assert model.diffusion_head.input_proj.weight.grad.abs().sum() > 0
    assert model.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("probability", [0.1, 0.3])
def test_label_dropout_substitutes_the_null_class_at_the_configured_rate(probability):
    config = tiny_config(latent_size=2, hidden_size=16, head_width=16, diffusion_batch_mul=1,
                         class_dropout_prob=probability)
    model = FARTransformer(config).train()
    labels = torch.arange(4000) % config.num_classes
    out = model(torch.randn(4000, 2, 2, 2, generator=seeded(8)), labels, generator=seeded(9))
    dropped = out.class_labels == config.null_class_id
    assert abs(dropped.float().mean().item() - probability) < 0.02  # ~4.4 binomial standard deviations at 0.1
    assert torch.equal(out.class_labels[~dropped], labels[~dropped])
    assert set(out.class_labels.unique().tolist()) == set(range(config.num_classes + 1))
    again = model(torch.randn(4000, 2, 2, 2, generator=seeded(8)), labels, generator=seeded(9))
    assert torch.equal(again.class_labels, out.class_labels)  # reproducible per generator
    assert torch.equal(model.eval()(torch.randn(8, 2, 2, 2), labels[:8]).class_labels, labels[:8])  # not at eval


def test_mask_fraction_is_drawn_from_r_i_to_1():
    config = tiny_config(diffusion_batch_mul=1, class_dropout_prob=0.0)
    model = FARTransformer(config).train()
    out = model(torch.randn(2000, 2, 4, 4, generator=seeded(10)), torch.zeros(2000, dtype=torch.long),
                generator=seeded(11))
    low, high = far_mask_ratio_range(out.levels, config.num_levels)
    assert high == 1.0
    assert bool((out.mask_ratios >= low - 1e-6).all()) and bool((out.mask_ratios <= 1.0).all())
    counts, expected = out.mask.sum(dim=1).double(), config.num_tokens * out.mask_ratios.double()  # ceil(L * ratio)
    assert bool(((counts >= expected - 1e-4) & (counts < expected + 1 + 1e-4)).all())
    assert set(out.levels.tolist()) == set(range(config.num_levels))  # levels 0 .. F-1
    lowest, highest = out.mask_ratios[out.levels == 0], out.mask_ratios[out.levels == config.num_levels - 1]
    assert lowest.min() >= 0.7 - 1e-6 and highest.min() < 0.5  # the range opens up to [0, 1] at the top level
    assert lowest.mean() > highest.mean()
    # explicit levels give their own ranges; without masking nothing is masked
    mask, ratios = model.sample_mask(torch.full((500,), 2), seeded(12))
    assert ratios.min() >= far_mask_ratio_range(2, config.num_levels)[0] - 1e-6 and ratios.max() <= 1.0
    unmasked = FARTransformer(tiny_config(use_mask=False))(torch.randn(4, 2, 4, 4), torch.zeros(4, dtype=torch.long))
    assert not unmasked.mask.any()


def test_masked_input_tokens_are_hidden_from_the_transformer():
    model = spread(FARTransformer(tiny_config())).eval()
    tokens = torch.randn(3, 16, 2, generator=seeded(13))
    labels = torch.tensor([0, 3, 5])  # 5 = null class
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :10], mask[1, 3:5], mask[2, ::2] = True, True, True  # different visible counts per row (padding)
    with torch.no_grad():
        reference = model.conditions(tokens, labels, mask)
        changed = tokens.clone()
        changed[mask] = torch.randn(int(mask.sum()), 2) * 5
        assert torch.allclose(model.conditions(changed, labels, mask), reference, atol=1e-5)
        changed[1, 0] += 1.0  # a visible token
        assert not torch.allclose(model.conditions(changed, labels, mask)[1], reference[1], atol=1e-3)
        for row in range(3):  # rows do not see each other's padding
            alone = model.conditions(tokens[row : row + 1], labels[row : row + 1], mask[row : row + 1])
            assert torch.allclose(alone[0], reference[row], atol=1e-5)
        assert torch.equal(model.conditions(tokens, labels, torch.zeros_like(mask)), model.conditions(tokens, labels))


# ---------------------------------------------------------------------------------------------------------------
# Sampling: outer loop, inner diffusion, CFG
# ---------------------------------------------------------------------------------------------------------------


def test_cfg_combines_conditional_and_unconditional_outputs():
    """With one outer step and one inner step the sample is the head's x_0 prediction from the initial noise x_t,
    x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), affine in the noise prediction eps (the initial noise is the same in
    every call), so the guided sample must be (1 + w) x_cond - w x_uncond; guidance_scale = 1 + w. The single inner
    step is placed at t = 500 (same noise schedule, `steps_offset`) so that eps carries a large weight."""
    model = spread(FARTransformer(tiny_config()), std=0.3).eval()
    null = model.config.null_class_id
    scheduler = DDPMScheduler.from_config(build_noise_scheduler(model.config).config, timestep_spacing="leading",
                                          steps_offset=500)
    one_step = dict(num_steps=1, diffusion_steps=1, scheduler=scheduler)
    conditional = model.sample([1, 3], generator=seeded(14), **one_step)
    unconditional = model.sample([null, null], generator=seeded(14), **one_step)
    difference = conditional - unconditional
    assert difference.abs().max() > 0.01
    for w in (0.5, 2.0):
        guided = model.sample([1, 3], guidance_scale=1.0 + w, generator=seeded(14), **one_step)
        assert torch.allclose(guided, (1 + w) * conditional - w * unconditional, rtol=1e-5, atol=1e-4)
        assert torch.allclose(guided - conditional, w * difference, atol=1e-4)  # the guidance term itself
    # w = 0 is the conditional model, also over several outer and inner steps
    several = dict(num_steps=2, diffusion_steps=3, generator=seeded(15))
    assert torch.equal(model.sample([1, 3], guidance_scale=1.0, **several),
                       model.sample([1, 3], **dict(several, generator=seeded(15))))
    assert not torch.equal(model.sample([1, 3], guidance_scale=3.0, **dict(several, generator=seeded(15))),
                           model.sample([1, 3], **dict(several, generator=seeded(15))))
    with pytest.raises(ValueError, match="no null class"):
        FARTransformer(tiny_config(class_dropout_prob=0.0)).sample([1], guidance_scale=2.0, num_steps=1)


def test_inner_sampler_reproduces_a_gaussian_with_the_ideal_head(monkeypatch):
    """The reverse diffusion of `_sample_tokens` (respaced cosine schedule, learned-range variance at its posterior
    end) with the exact noise prediction of N(mu, s^2) data samples N(mu, s^2)."""
    model = FARTransformer(tiny_config()).eval()
    head = model.diffusion_head
    mu, std = torch.tensor([2.0, -1.5]), torch.tensor([0.3, 1.5])
    alphas = model.noise_scheduler.alphas_cumprod.float()
    monkeypatch.setattr(head, "embed_time", lambda timesteps, dtype: timesteps.float().view(1, 1))

    def ideal(x_t, time, condition):
        alpha = alphas[int(time.item())]
        eps = (1 - alpha).sqrt() * (x_t - alpha.sqrt() * mu) / (alpha * std**2 + 1 - alpha)
        return torch.cat([eps, -torch.ones_like(eps)], dim=-1)  # raw variance -1: the posterior variance

    monkeypatch.setattr(head, "denoise", ideal)
    samples = model.sample([0] * 128, num_steps=1, diffusion_steps=100, generator=seeded(16))
    values = samples.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(values.mean(dim=1), mu, atol=0.05)
    assert torch.allclose(values.std(dim=1) / std, torch.ones(2), atol=0.1)


def test_outer_loop_refilters_the_full_latent_and_follows_the_schedules(monkeypatch):
    model = spread(FARTransformer(tiny_config(latent_size=8, diffusion_batch_mul=1))).eval()  # F = 8
    calls, seen_inputs = [], []
    original_conditions = model.conditions

    def conditions(tokens, labels, mask=None):
        seen_inputs.append(tokens[:2].clone())  # with CFG the conditional rows come first
        return original_conditions(tokens, labels, mask)

    def sample_tokens(condition, level, inner_steps, scale, temperature, scheduler, generator, guided=False):
        calls.append((level, inner_steps, scale, temperature))
        return torch.randn(2, condition.shape[1], 2, generator=generator)

    monkeypatch.setattr(model, "conditions", conditions)
    monkeypatch.setattr(model, "_sample_tokens", sample_tokens)
    outputs = []
    final = model.sample([1, 2], num_steps=4, guidance_scale=3.0, guidance_schedule="linear", temperature=(0.8, 1.0),
                         generator=seeded(17), callback=lambda step, level, x: outputs.append((level, x.clone())))
    levels, inner, scales, temperatures = zip(*calls)
    assert list(levels) == [0, 2, 4, 6]  # input levels: blank, then the previous outputs' levels
    assert [level for level, _ in outputs] == far_level_schedule(4, 8) == [2, 4, 6, 8]
    assert list(inner) == far_diffusion_steps(4) == [40, 60, 80, 100]
    assert np.allclose(scales, [1.0, 1.5, 2.0, 2.5])  # 1 + (g - 1) k / n, the reference sampler's ramp
    assert np.allclose(temperatures, [0.8, 0.8 + 0.2 / 3, 0.8 + 0.4 / 3, 1.0])
    assert torch.equal(seen_inputs[0], torch.zeros_like(seen_inputs[0]))
    for step in range(1, 4):  # DMS: each step's input is the previous FULL sample filtered to its level
        expected = model.patchify(frequency_filter(outputs[step - 1][1], levels[step], 8))
        assert torch.allclose(seen_inputs[step], expected)
    assert torch.equal(final, outputs[-1][1])
    calls.clear()
    model.sample([1, 2], num_steps=2, diffusion_steps=25, generator=seeded(17))
    assert [(level, steps, scale, temperature) for level, steps, scale, temperature in calls] == [
        (0, 25, 1.0, 1.0), (4, 25, 1.0, 1.0)]
    calls.clear()
    model.sample([1, 2], generator=seeded(17))  # defaults from the config: 8 outer steps (F = 8 < 10)
    assert [call[0] for call in calls] == list(range(8))


def test_reference_sampler_schedules_levels_temperature_and_mask_order(monkeypatch):
    """The reference sampler's settings: an explicit input-level schedule (latent_core), its cosine temperature ramp
    0.8 -> 1.0, and an inference mask over ONE random token order per sample (mask_by_order of fixed `orders`)."""
    config = tiny_config(latent_size=8, num_levels=8)
    model = spread(FARTransformer(config)).eval()
    calls, masks = [], []
    original_conditions = model.conditions

    def conditions(tokens, labels, mask=None):
        masks.append(None if mask is None else mask.clone())
        return original_conditions(tokens, labels, mask)

    def sample_tokens(condition, level, inner_steps, scale, temperature, scheduler, generator, guided=False):
        calls.append((level, temperature, guided))
        return torch.randn(2, condition.shape[1], 2, generator=generator)

    monkeypatch.setattr(model, "conditions", conditions)
    monkeypatch.setattr(model, "_sample_tokens", sample_tokens)
    outputs = []
    model.sample([1, 2], level_schedule=[0, 2, 3, 5], temperature=(0.8, 1.0), temperature_schedule="cosine",
                 mask_schedule="cosine", generator=seeded(3), callback=lambda step, level, x: outputs.append(level))
    assert [level for level, _, _ in calls] == [0, 2, 3, 5] and outputs == [2, 3, 5, 8]
    expected = [0.8 + 0.2 * (1 - math.cos(math.pi / 2 * (k + 1) / 4)) for k in range(4)]  # the reference's ramp
    assert np.allclose([t for _, t, _ in calls], expected)
    counts = [int(mask[0].sum()) for mask in masks]
    assert counts == [64] + [math.floor(64 * math.cos(math.pi / 2 * k / 4)) for k in range(1, 4)]  # all at step 0
    for earlier, later in zip(masks, masks[1:]):  # one order: each step's masked tokens are a subset of the last's
        assert bool((later <= earlier).all())
    assert not torch.equal(masks[1][0], masks[1][1])  # ... drawn per sample

    calls.clear()
    with pytest.raises(ValueError, match="level_schedule must start at 0"):
        model.sample([1], level_schedule=[1, 2])
    with pytest.raises(ValueError, match="level_schedule must start at 0"):
        model.sample([1], level_schedule=[0, 3, 3])
    with pytest.raises(ValueError, match="level_schedule must start at 0"):
        model.sample([1], level_schedule=[0, 8])
    with pytest.raises(ValueError, match="does not match level_schedule"):
        model.sample([1], num_steps=3, level_schedule=[0, 2])
    with pytest.raises(ValueError, match="temperature_schedule must be one of"):
        model.sample([1], num_steps=1, temperature=(0.8, 1.0), temperature_schedule="cubic")


def test_config_level_schedule_is_the_default_and_a_different_step_count_spreads_evenly(monkeypatch):
    model = spread(FARTransformer(tiny_config(latent_size=8, num_levels=8, level_schedule=[0, 1, 4])))
    assert model.config.num_inference_steps == 3
    levels = []
    monkeypatch.setattr(model, "_sample_tokens", lambda condition, level, *args, **kwargs: (
        levels.append(level), torch.zeros(condition.shape[0], condition.shape[1], 2))[1])
    model.sample([1])
    assert levels == [0, 1, 4]
    levels.clear()
    model.sample([1], num_steps=4)  # another count: the even spread, far_level_schedule(4, 8) = [2, 4, 6, 8]
    assert levels == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="does not match level_schedule"):
        tiny_config(latent_size=8, num_levels=8, level_schedule=[0, 1, 4], num_inference_steps=5)


def test_presets_carry_the_reference_recipe_and_the_mask_follows_training():
    far_b = FARConfig.from_preset("far-b")
    assert (far_b.dropout, far_b.attention_dropout, far_b.class_buffer_size) == (0.1, 0.1, 64)
    assert far_b.level_schedule == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10] and far_b.num_inference_steps == 10
    assert (far_b.guidance_scale, far_b.guidance_schedule, far_b.diffusion_steps) == (3.0, "linear", "linear")
    assert (far_b.temperature, far_b.temperature_schedule) == ([0.8, 1.0], "cosine")
    assert (far_b.head_depth, FARConfig.from_preset("far-l").head_depth) == (6, 3)
    assert far_b.inference_mask_schedule == "cosine"  # trained with the mask (use_mask default) -> samples with it
    assert tiny_config(use_mask=False).inference_mask_schedule == "none"
    assert tiny_config(use_mask=False, inference_mask_schedule="cosine").inference_mask_schedule == "cosine"


# ---------------------------------------------------------------------------------------------------------------
# A tiny FAR learns a toy latent distribution; the pipeline around it
# ---------------------------------------------------------------------------------------------------------------

MU = torch.tensor([2.0, -1.5])
SIGMA = torch.tensor([0.3, 1.5])


def toy_latents(count: int, generator: torch.Generator):
    """Class 0: per-channel N(MU, SIGMA^2) i.i.d. pixels; class 1: N(-MU, SIGMA^2)."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    sign = (1 - 2 * labels).float().view(-1, 1, 1, 1)
    noise = torch.randn(count, 2, 4, 4, generator=generator)
    return sign * MU.view(1, 2, 1, 1) + SIGMA.view(1, 2, 1, 1) * noise, labels


def sample_statistics(model: FARTransformer):
    """Worst per-channel |mean error| over both classes, and per-channel std / SIGMA for class 0."""
    samples = model.eval().sample([0] * 64 + [1] * 64, generator=seeded(1))
    values = [samples[:64].transpose(0, 1).reshape(2, -1), samples[64:].transpose(0, 1).reshape(2, -1)]
    mean_error = max((values[0].mean(dim=1) - MU).abs().max().item(), (values[1].mean(dim=1) + MU).abs().max().item())
    return mean_error, values[0].std(dim=1) / SIGMA


@pytest.fixture(scope="module")
def trained():
    """A tiny FAR (2 x 4 x 4 latents, F = 4) trained 300 AdamW steps on `toy_latents`.

    It uses DDPM's linear beta schedule: with the cosine schedule (the default, MAR's), alpha_bar at t = 999 is
    2.4e-9, so the first respaced step multiplies the head's noise-prediction error by about 350 and only a well
    trained head (error ~1e-3) samples sensibly; a few seconds of CPU training do not get there. The cosine sampler
    itself is checked against the ideal head in `test_inner_sampler_reproduces_a_gaussian_with_the_ideal_head`.
    """
    config = FARConfig(latent_channels=2, latent_size=4, num_classes=2, class_buffer_size=2, hidden_size=32,
                       encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=64,
                       diffusion_batch_mul=1, beta_schedule="linear", id2label=dict(enumerate(NAMES)))
    torch.manual_seed(0)
    model = FARTransformer(config)
    untrained = sample_statistics(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    generator = seeded(0)
    model.train()
    for _ in range(300):
        latents, labels = toy_latents(32, generator)
        loss = model(latents, labels, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), untrained


def test_tiny_far_learns_a_toy_latent_distribution(trained):
    model, (untrained_error, untrained_ratio) = trained
    error, ratio = sample_statistics(model)
    # class-conditional means of +-2 / -+1.5 and stds of 0.3 / 1.5 (far from N(0, 1))
    assert error < 0.6 and error < untrained_error / 5, (error, untrained_error)
    assert bool(((ratio > 0.6) & (ratio < 1.5)).all()), ratio
    assert (untrained_ratio - 1).abs().max() > 3 * (ratio - 1).abs().max()


def tiny_vae(latent_channels: int = 2) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16).eval()  # 16 px -> 4x4


@pytest.fixture(scope="module")
def pipe(trained):
    pipeline = FARPipeline(vae=tiny_vae(), transformer=trained[0], scheduler=build_noise_scheduler(trained[0].config))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


FAST = dict(diffusion_steps=4)


def test_pipeline_same_seed_same_images_other_seed_differs(pipe):
    first = pipe([0, 1], generator=seeded(3), output_type="np", **FAST).images
    second = pipe([0, 1], generator=seeded(3), output_type="np", **FAST).images
    third = pipe([0, 1], generator=seeded(4), output_type="np", **FAST).images
    assert np.array_equal(first, second)
    assert not np.allclose(first, third, atol=1e-3)


def test_pipeline_output_types(pipe):
    pil = pipe(["circle", 1, "square"], generator=seeded(5), **FAST).images
    assert len(pil) == 3 and all(isinstance(image, Image.Image) and image.size == (16, 16) and image.mode == "RGB"
                                 for image in pil)
    array = pipe([0, 1, 1], generator=seeded(5), output_type="np", **FAST)
    assert array.images.shape == (3, 16, 16, 3) and array.images.min() >= 0 and array.images.max() <= 1
    assert np.array_equal(np.stack([np.asarray(image) for image in pil]), (array.images * 255).round().astype(np.uint8))
    tensor = pipe([0, 1, 1], generator=seeded(5), output_type="pt", **FAST)
    assert tensor.images.shape == (3, 3, 16, 16) and tensor.images.min() >= 0 and tensor.images.max() <= 1
    assert np.allclose(tensor.images.permute(0, 2, 3, 1).numpy(), array.images, atol=1e-6)
    latent = pipe([0, 1, 1], generator=seeded(5), output_type="latent", **FAST)
    assert latent.images.shape == (3, 2, 4, 4) and torch.equal(latent.images, latent.latents)
    assert torch.equal(latent.latents, array.latents)
    assert np.allclose(pipe.image_processor.postprocess(pipe.decode_latents(latent.latents), output_type="np"),
                       array.images, atol=1e-6)
    images, = pipe([0, 1, 1], generator=seeded(5), output_type="np", return_dict=False, **FAST)
    assert np.array_equal(images, array.images)


def test_pipeline_intermediates_and_callback(pipe):
    recorded = []

    def callback(pipeline, step, timestep, tensors):
        recorded.append((step, tensors["latents"].clone()))
        return None

    out = pipe([0, 1], num_inference_steps=3, generator=seeded(6), output_type="latent", return_intermediates=True,
               callback_on_step_end=callback, **FAST)
    schedule = far_level_schedule(3, 4)
    assert [step for step, _ in recorded] == [0, 1, 2] and len(out.intermediates) == 3
    for (step, latents), intermediate, level in zip(recorded, out.intermediates, schedule):
        assert torch.allclose(intermediate, frequency_filter(latents, level, 4))  # coarse to fine
    assert torch.equal(out.intermediates[-1], out.latents)  # the last level is F: the final latent
    images = pipe([0, 1], num_inference_steps=3, generator=seeded(6), output_type="np", return_intermediates=True,
                  **FAST)
    assert len(images.intermediates) == 3 and all(step.shape == (2, 16, 16, 3) for step in images.intermediates)
    assert np.allclose(images.intermediates[-1], images.images, atol=1e-6)
    assert not np.allclose(images.intermediates[0], images.images, atol=1e-3)
    # the callback's returned latents replace the step's sample
    zeros = pipe([0, 1], num_inference_steps=3, generator=seeded(6), output_type="latent", **FAST,
                 callback_on_step_end=lambda p, step, t, tensors: {"latents": torch.zeros_like(tensors["latents"])}
                 if step == 2 else None)
    assert torch.equal(zeros.latents, torch.zeros(2, 2, 4, 4))
    # sampling defaults come from transformer.config: F = 4 outer steps
    assert len(pipe([0], generator=seeded(6), output_type="latent", return_intermediates=True, **FAST)
               .intermediates) == 4


def test_pipeline_progress_bar_counts_outer_steps(pipe, capfd):
    pipe.set_progress_bar_config(disable=False)
    try:
        capfd.readouterr()
        pipe([0], num_inference_steps=3, generator=seeded(7), output_type="latent", **FAST)
        assert "3/3" in capfd.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)


def test_pipeline_save_load_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["transformer"] == ["spectralar_hf", "FARTransformer"]
    assert index["vae"][1] == "AutoencoderKL" and index["scheduler"][1] == "DDPMScheduler"
    loaded = FARPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.transformer, FARTransformer) and loaded.transformer.config.beta_schedule == "linear"
    expected = pipe([0, 1], generator=seeded(8), output_type="np", **FAST).images
    assert np.array_equal(loaded([0, 1], generator=seeded(8), output_type="np", **FAST).images, expected)
    assert loaded.labels == {"circle": 0, "square": 1}
    card = str(loaded.model_card("me/far-toy"))  # offline: our model card for the Hub
    assert 'FARPipeline.from_pretrained("me/far-toy")' in card and "F = 4 frequency levels" in card


def test_transformer_save_load_round_trip(trained, tmp_path):
    model = trained[0]
    model.save_pretrained(tmp_path / "far")
    loaded = FARTransformer.from_pretrained(tmp_path / "far").eval()
    auto = AutoModel.from_pretrained(tmp_path / "far").eval()
    assert type(auto) is FARTransformer and loaded.config.to_diff_dict() == model.config.to_diff_dict()
    for other in (loaded, auto):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
        assert torch.equal(other.sample([0, 1], diffusion_steps=5, generator=seeded(9)),
                           model.sample([0, 1], diffusion_steps=5, generator=seeded(9)))
    latents, labels = toy_latents(4, seeded(10))
    assert torch.equal(loaded(latents, labels, generator=seeded(11)).loss,
                       model(latents, labels, generator=seeded(11)).loss)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(pipe):
    model = FARTransformer(tiny_config())  # 5 classes, id 5 = null class, F = 4
    latents = torch.randn(2, 2, 4, 4)
    for shape in [(2, 3, 4, 4), (2, 2, 8, 8), (2, 2, 4)]:
        with pytest.raises(ValueError, match=r"latents must have shape \(B, 2, 4, 4\)"):
            model(torch.randn(*shape), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="floating-point"):
        model(latents.long(), torch.tensor([0, 1]))
    for labels in ([0, 6], [-1, 0]):
        with pytest.raises(ValueError, match="class id out of range"):
            model(latents, torch.tensor(labels))
        with pytest.raises(ValueError, match="class id out of range"):
            model.sample(labels, num_steps=1, diffusion_steps=1)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        model(latents, torch.tensor([0, 1, 2]))
    for levels in ([0, 4], [-1, 0]):
        with pytest.raises(ValueError, match=r"levels must be 2 input levels in \[0, 4\)"):
            model(latents, torch.tensor([0, 1]), levels=torch.tensor(levels))
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 4\]"):
        model.sample([0], num_steps=5)
    with pytest.raises(ValueError, match="diffusion_steps"):
        model.sample([0], num_steps=2, diffusion_steps=[10])
    with pytest.raises(ValueError, match=r"diffusion_steps must lie in \[1, 50\]"):  # 'linear' reaches 100
        FARTransformer(tiny_config(num_train_timesteps=50)).sample([0], num_steps=2)
    with pytest.raises(ValueError, match="guidance_schedule"):
        model.sample([0], num_steps=1, guidance_schedule="cosine")
    with pytest.raises(ValueError, match="temperature"):
        model.sample([0], num_steps=1, temperature=0.0)
    with pytest.raises(ValueError, match="filter_kind"):
        tiny_config(filter_kind="wavelet")
    with pytest.raises(ValueError, match="num_levels"):
        tiny_config(num_levels=5)
    # the pipeline
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 4\]"):
        pipe([0], num_inference_steps=5)
    with pytest.raises(ValueError, match="class id out of range"):
        pipe([3])  # 2 classes; id 2 is the null class (unconditional)
    with pytest.raises(ValueError, match="did you mean"):
        pipe(["circel"])
    with pytest.raises(ValueError, match="output_type"):
        pipe([0], output_type="jpeg")
    with pytest.raises(ValueError, match="latent_channels"):
        FARPipeline(vae=tiny_vae(latent_channels=3), transformer=pipe.transformer, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="noise schedule"):
        FARPipeline(vae=pipe.vae, transformer=pipe.transformer,
                    scheduler=build_noise_scheduler(tiny_config()))  # cosine, but the transformer was trained on linear


def test_block_drops_after_the_gelu_like_timms_mlp_and_keeps_parameter_names():
    from spectralar_hf.models.far.modeling_far import FARBlock

    block = FARBlock(tiny_config(dropout=0.5))
    assert [name for name, _ in block.mlp.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    seen = []
    block.mlp[2].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    hidden = torch.randn(2, 5, 32, generator=seeded(0))
    block.train()(hidden, None)
    block.eval()(hidden, None)
    trained, evaluated = seen
    assert 0.3 < float((trained == 0).float().mean()) < 0.7  # dropout p = 0.5 on the fc2 input (timm's drop1)
    assert float((evaluated == 0).float().mean()) < 0.01
