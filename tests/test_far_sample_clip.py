"""`FARConfig.sample_clip_range`: the x0 clipping of the head's sampler, carried by the DDPMScheduler built from the
config (diffusers' `clip_sample` / `clip_sample_range`)."""

import pytest
import torch

from spectralar_hf import FARConfig, FARTransformer, build_noise_scheduler


def tiny_model(**overrides) -> FARTransformer:
    torch.manual_seed(0)
    model = FARTransformer(FARConfig.from_preset("tiny", **overrides)).eval()
    with torch.no_grad():  # an untrained head whose eps prediction is far from x_t at t = 999 (zero-init otherwise)
        for parameter in model.diffusion_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def sample(model: FARTransformer, scheduler=None) -> torch.Tensor:
    return model.sample([1, 2, 3], num_steps=3, diffusion_steps=6, scheduler=scheduler,
                        generator=torch.Generator().manual_seed(0))


def test_scheduler_carries_the_clip_range():
    assert build_noise_scheduler(FARConfig.from_preset("tiny")).config.clip_sample is False
    scheduler = build_noise_scheduler(FARConfig.from_preset("tiny", sample_clip_range=3.5))
    assert scheduler.config.clip_sample is True and scheduler.config.clip_sample_range == 3.5


def test_clipped_samples_stay_in_range_and_a_wide_range_changes_nothing():
    unclipped = sample(tiny_model())
    assert unclipped.abs().max() > 2.0  # the untrained head overshoots without clipping
    clipped = sample(tiny_model(sample_clip_range=2.0))
    # the last inner step (t = 0) returns the posterior mean = the clipped x0 itself
    assert clipped.abs().max() <= 2.0 + 1e-6
    torch.testing.assert_close(sample(tiny_model(sample_clip_range=1e30)), unclipped)


def test_a_pipeline_scheduler_overrides_the_config():
    model = tiny_model(sample_clip_range=2.0)
    free = build_noise_scheduler(FARConfig.from_preset("tiny"))  # a scheduler given explicitly wins
    torch.testing.assert_close(sample(model, free), sample(tiny_model()))


@pytest.mark.parametrize("value", [0, -1.0])
def test_bad_clip_range_is_an_error(value):
    with pytest.raises(ValueError, match="sample_clip_range must be > 0"):
        FARConfig.from_preset("tiny", sample_clip_range=value)
