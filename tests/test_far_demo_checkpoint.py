"""The shipped FAR demo pipeline (`checkpoints/far-fashion-mnist`): it loads offline, is deterministic, samples
coarse to fine with its saved defaults, its VAE reconstructs real Fashion-MNIST images and its samples are
recognisably of their class more often than chance (when the Fashion-MNIST IDX files are installed)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from spectralar_hf import FARPipeline
from spectralar_hf.training.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "far-fashion-mnist"
HAS_DATA = (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file()
# Recorded in benchmarks/RESULTS.md on 1,000 test images / samples; the thresholds leave a margin for 50-64 images.
MIN_VAE_PSNR = 25.0
MIN_KNN_AGREEMENT = 0.25  # chance: 0.1


@pytest.fixture(scope="module")
def pipe() -> FARPipeline:
    pipe = FARPipeline.from_pretrained(DEMO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_far_demo_is_complete_with_its_sampling_defaults(pipe):
    files = {str(p.relative_to(DEMO)) for p in DEMO.rglob("*") if p.is_file()}
    assert {"model_index.json", "README.md", "transformer/model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= files
    config = pipe.transformer.config
    assert (config.latent_channels, config.latent_size, config.num_levels) == (4, 8, 8)
    assert [config.id2label[i] for i in range(10)] == list(FASHION_MNIST_CLASSES)
    assert (config.num_inference_steps, config.diffusion_steps, config.guidance_scale) == (8, 25, 3.0)
    assert pipe.scheduler.config.clip_sample and pipe.scheduler.config.clip_sample_range == config.sample_clip_range
    assert "library_name: spectralar_hf" in (DEMO / "README.md").read_text()


def test_far_demo_is_deterministic_and_coarse_to_fine(pipe):
    first = pipe(["Trouser", "Sneaker"], output_type="np", generator=torch.Generator().manual_seed(3),
                 return_intermediates=True)
    again = pipe(["Trouser", "Sneaker"], output_type="np", generator=torch.Generator().manual_seed(3))
    assert first.images.shape == (2, 32, 32, 1) and np.array_equal(first.images, again.images)
    steps = first.intermediates
    assert len(steps) == 8 and np.allclose(steps[-1], first.images, atol=1e-5)

    def variation(x):
        return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean())
    # the first step's output filtered to level 1 of 8 is a smooth, low-frequency image
    assert variation(steps[0]) < 0.5 * variation(steps[-1])


@pytest.mark.skipif(not HAS_DATA, reason="needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
def test_far_demo_vae_reconstructs_test_images(pipe):
    from spectralar_hf.evaluation import psnr
    from spectralar_hf.evaluation.report import load_evaluation_images

    images, _ = load_evaluation_images(32, 1, idx_data_dir=FASHION_MNIST_DIR, split="test", num_images=64, seed=5)
    with torch.no_grad():
        reconstruction = pipe.decode_latents(pipe.encode((images + 1) / 2)).clamp(-1, 1)
    assert float(psnr(reconstruction, images)) > MIN_VAE_PSNR


@pytest.mark.skipif(not HAS_DATA, reason="needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
def test_far_demo_samples_are_recognisably_of_their_class(pipe):
    from spectralar_hf.evaluation import knn_class_agreement
    from spectralar_hf.evaluation.report import generate_images, load_evaluation_images

    reference = load_evaluation_images(32, 1, idx_data_dir=FASHION_MNIST_DIR, split="train", num_images=5000, seed=2)
    classes = [c for c in range(10) for _ in range(3)]  # agreement 0.43 on these 30 samples
    samples = generate_images(pipe, classes, batch_size=30, seed=0)
    assert knn_class_agreement(samples, classes, *reference) > MIN_KNN_AGREEMENT
