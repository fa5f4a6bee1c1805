"""Test-suite setup: offline, a throwaway HF cache, deterministic CPU threads."""

import os
import tempfile

# Set before transformers / huggingface_hub are imported anywhere: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="spectralar-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (request it with `pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models run faster, and in-process script runs match single-threaded subprocesses bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_tokenizer_config() -> SpectralTokenizerConfig:
    return SpectralTokenizerConfig.from_preset("tiny-32")


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_config) -> SpectralTokenizer:
    torch.manual_seed(0)
    return SpectralTokenizer(tiny_tokenizer_config).eval()


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1


def blob_images(count: int, seed: int, size: int = 28):
    """Smooth grayscale blobs (learnable structure, not noise) as `(size, size)` uint8 arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    images = []
    for _ in range(count):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(3, 8)
        images.append((255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))).astype(np.uint8))
    return images


def write_idx_dataset(root, images, labels) -> None:
    """Write `images` `(N, H, W)` uint8 and `labels` `(N,)` as gzipped MNIST-format IDX files (train and t10k)."""
    import gzip
    import struct

    import numpy as np

    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.uint8)
    for split in ("train", "t10k"):
        with gzip.open(root / f"{split}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.tobytes())
        with gzip.open(root / f"{split}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.tobytes())
