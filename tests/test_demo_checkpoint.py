"""The shipped demo pipeline (`checkpoints/spectralar-fashion-mnist`): it loads offline, is deterministic, its
tokenizer reconstructs real Fashion-MNIST images and its samples are recognisably of their class (when the
Fashion-MNIST IDX files are installed: `apt-get install dataset-fashion-mnist`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from spectralar_hf import SpectralARPipeline
from spectralar_hf.training.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "spectralar-fashion-mnist"
HAS_DATA = (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file()
# Recorded in benchmarks/RESULTS.md (1,000 test images / samples); the thresholds leave a margin for 64-400 images.
MIN_RECONSTRUCTION_PSNR = 22.0  # 24.1 dB recorded
MIN_KNN_AGREEMENT = 0.75  # 0.804 recorded with the saved defaults (0.69 without guidance)


@pytest.fixture(scope="module")
def pipe() -> SpectralARPipeline:
    return SpectralARPipeline.from_pretrained(DEMO)


def test_demo_pipeline_is_complete_and_consistent(pipe):
    assert {"model_index.json", "README.md", "tokenizer/model.safetensors",
            "transformer/model.safetensors"} <= {str(p.relative_to(DEMO)) for p in DEMO.rglob("*") if p.is_file()}
    tokenizer, transformer = pipe.tokenizer.config, pipe.transformer.config
    assert (tokenizer.image_size, tokenizer.num_channels) == (32, 1)
    assert tokenizer.omega == list(range(1, 33))
    assert transformer.vocab_size == tokenizer.codebook_size and transformer.num_image_tokens == 32
    generation = pipe.transformer.generation_config  # the demo's sampling defaults, chosen by a recorded sweep
    assert (generation.guidance_scale, generation.top_p, generation.top_k) == (1.5, 1.0, None)  # top_p 1: none
    assert [transformer.id2label[i] for i in range(10)] == list(FASHION_MNIST_CLASSES)
    assert "library_name: spectralar_hf" in (DEMO / "README.md").read_text()
    for config in DEMO.rglob("*.json"):  # no path of the machine that packaged it (diffusers' _name_or_path)
        text = config.read_text()
        assert "/root/" not in text and "_name_or_path" not in text, config


def test_demo_samples_are_deterministic_and_coarse_to_fine(pipe):
    first = pipe(["Sneaker", "Trouser"], output_type="np", generator=torch.Generator().manual_seed(3),
                 return_intermediates=True)
    again = pipe(["Sneaker", "Trouser"], output_type="np", generator=torch.Generator().manual_seed(3))
    assert first.images.shape == (2, 32, 32, 1) and np.array_equal(first.images, again.images)
    steps = first.intermediates
    assert len(steps) == 32 and np.allclose(steps[-1], first.images, atol=1e-5)
    # Early prefixes are smooth low-pass images: far less total variation than the final samples.
    def variation(x):
        return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean())
    assert variation(steps[1]) < 0.5 * variation(steps[-1])


@pytest.mark.skipif(not HAS_DATA, reason="needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
def test_demo_tokenizer_reconstructs_test_images(pipe):
    from spectralar_hf.evaluation import psnr
    from spectralar_hf.evaluation.report import load_evaluation_images

    images, _ = load_evaluation_images(32, 1, idx_data_dir=FASHION_MNIST_DIR, split="test", num_images=64, seed=5)
    with torch.no_grad():
        reconstruction = pipe.tokenizer.decode(pipe.tokenizer.encode(images).codes).reconstruction.clamp(-1, 1)
    assert float(psnr(reconstruction, images)) > MIN_RECONSTRUCTION_PSNR


@pytest.mark.skipif(not HAS_DATA, reason="needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
def test_demo_samples_are_recognisably_of_their_class(pipe):
    from spectralar_hf.evaluation import knn_class_agreement
    from spectralar_hf.evaluation.report import generate_images, load_evaluation_images

    reference = load_evaluation_images(32, 1, idx_data_dir=FASHION_MNIST_DIR, split="train", num_images=10000, seed=2)
    classes = [c for c in range(10) for _ in range(40)]  # 0.785 measured; real test images 0.803
    samples = generate_images(pipe, classes, batch_size=100, seed=0)
    assert knn_class_agreement(samples, classes, *reference) > MIN_KNN_AGREEMENT
