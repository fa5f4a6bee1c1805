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


def pytest_addoption(parser):
    parser.addoption("--perturb-floats", action="store_true",
                     help="round float32 matrix products as another CPU might (tests/float_perturbation.py): a test "
                          "that fails only with this flag depends on last-bit rounding")


@pytest.fixture(autouse=True)
def perturbed_floats(request):
    """With --perturb-floats, every test runs inside `FloatPerturbation`, except those marked `same_machine` (they
    compare with a subprocess, which is not perturbed, and are exact on any one machine)."""
    if not request.config.getoption("--perturb-floats") or request.node.get_closest_marker("same_machine"):
        yield
        return
    from float_perturbation import FloatPerturbation

    with FloatPerturbation():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (request it with `pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models run faster, and in-process script runs match single-threaded subprocesses bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Float results that another x86 CPU may round differently (another GEMM kernel, vector width or blocking) are
# compared up to float32 rounding, never bit for bit. Error model: a rounding difference is relative to the scale of
# the whole tensor (an element near 0 carries the absolute error of its large neighbours), ~1e-7 per matmul, grown by
# depth and by sampling loops. Measured with `pytest --perturb-floats` (tests/float_perturbation.py): at most 1.2e-6
# of max|x| for a 16-layer tokenizer pass and 5e-7 for the tiny FAR sampling loops; another Intel CPU gave 2.3e-7.
ROUNDING_TOLERANCE = 1e-5


def assert_rounding_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = ROUNDING_TOLERANCE) -> None:
    """`actual` equals `expected` up to float32 rounding: |actual - expected| <= rel x max(max|expected|, 1)."""
    scale = max(expected.detach().abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale)


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
