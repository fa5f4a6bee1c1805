"""Real learning: a tiny tokenizer trained on crops of real photos learns nested low-pass reconstructions."""

import pytest
import torch

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.spectral import lowpass
from spectralar_hf.training.data import load_sample_photos, random_crops
from spectralar_hf.training.vq import CodebookRestarter

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    photos = load_sample_photos()
    train = random_crops(photos, 2048, 32, scale=(0.15, 0.5), seed=0)
    test = random_crops(photos, 256, 32, scale=(0.15, 0.5), seed=1)
    model = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32"))
    restarter = CodebookRestarter(model.config.codebook_size)
    steps, batch = 800, 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        output = model(train[torch.randint(0, len(train), (batch,), generator=generator)], generator=generator)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        schedule.step()
        restarter.step(model.quantizer.codebook, output.codes, output.latents)
    return model.eval(), train, test


@torch.no_grad()
def test_full_prefix_far_below_mean_image_and_beyond_mean_colour(trained):
    model, train, test = trained
    codes = model.encode(test).codes
    error = (model.decode(codes).reconstruction - test).pow(2).mean()
    mean_image_error = (test - train.mean(0)).pow(2).mean()
    mean_colour_error = (test - test.mean((2, 3), keepdim=True)).pow(2).mean()  # a perfect DC-only decoder
    assert error < 0.5 * mean_image_error, (error, mean_image_error)
    # measured 0.843 x the DC-only error with 2 threads and 0.850 with 1 (the training's float rounding differs):
    # 0.92 keeps room for other CPUs while a decoder that learned nothing past the mean colour (1.0) still fails
    assert error < 0.92 * mean_colour_error, (error, mean_colour_error)
    assert codes.unique().numel() > 0.5 * model.config.codebook_size  # restarts keep the codebook alive


@torch.no_grad()
@pytest.mark.parametrize("k", [1, 2, 4])
def test_short_prefix_is_a_lowpass_image(trained, k):
    model, _, test = trained
    reconstruction = model.decode(model.encode(test).codes, k).reconstruction
    target = lowpass(test, model.config.omega[k - 1])
    to_target = (reconstruction - target).pow(2).mean()
    to_full = (reconstruction - test).pow(2).mean()
    assert to_target < 0.75 * to_full, (k, to_target, to_full)
