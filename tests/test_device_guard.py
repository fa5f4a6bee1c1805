"""Device-correct code without a GPU (issue 16): no tensor is created on the default device inside the models' and
pipelines' entry points, bfloat16 weights work end to end, and precision-critical parts stay float32 under bf16
autocast.

The guard (`device_guard`) runs a CPU model with two checks at once:

* the default device is `meta`: a tensor created without `device=` (by our code or by a library we call) lands on
  `meta` and mixing it with the model's CPU tensors raises, as a CPU tensor would on a CUDA model;
* a `TorchFunctionMode` raises `DeviceGuardError` naming the file and line of any factory call (`torch.arange`,
  `torch.zeros`, `torch.tensor`, ...) made from package code without `device=` (`torch.as_tensor` of a tensor, which
  keeps the tensor's device, is allowed).

A correct call gives exactly the outputs it gives without the guard; every test below checks that equality.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import sys
import tokenize
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.overrides import TorchFunctionMode

import spectralar_hf
from spectralar_hf import (
    FARConfig,
    FARPipeline,
    FARTransformer,
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf import spectral
from spectralar_hf.devices import high_precision_dtype, no_autocast
from spectralar_hf.models.far import DiffusionTables, build_noise_scheduler
from spectralar_hf.models.tokenizer.modeling_spectral_tokenizer import SpectralTokenizerDecoder
from spectralar_hf.models.vqgan.modeling_maskgit_vqgan import MaskGITVQGANQuantizer
from spectralar_hf.spectral import dct_2d, idct_2d, lowpass, spectral_target
from spectralar_hf.training.losses import (
    LeCAMRegularizer,
    PatchDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from spectralar_hf.training.vq import CodebookRestarter

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = Path(spectralar_hf.__file__).resolve().parent
TORCH_ROOT = Path(torch.__file__).resolve().parent
SPECTRALAR_DEMO = ROOT / "checkpoints" / "spectralar-fashion-mnist"
FAR_DEMO = ROOT / "checkpoints" / "far-fashion-mnist"
BF16 = torch.bfloat16

# Factory functions whose result lands on the default device unless `device=` is given.
FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.empty_strided, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.linspace,
    torch.logspace, torch.eye, torch.tril_indices, torch.triu_indices, torch.fft.fftfreq, torch.fft.rfftfreq,
}
TINY_PIXEL_DECODER = dict(hidden_channels=16, channel_mult=[1, 2, 2], num_res_blocks=1, z_channels=8,
                          codebook_size=32, norm_num_groups=8)


# ---------------------------------------------------------------------------------------------------------------
# The guard
# ---------------------------------------------------------------------------------------------------------------


class DeviceGuardError(AssertionError):
    """A factory call without `device=` in guarded code."""


@functools.lru_cache(maxsize=None)
def _is_under(path: str, roots: tuple[Path, ...]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(root) for root in roots)


class _FactoryDeviceCheck(TorchFunctionMode):
    """Raise `DeviceGuardError` for a factory call without `device=` whose caller (the first frame outside torch)
    lies under one of `roots`."""

    def __init__(self, roots: tuple[Path, ...]):
        super().__init__()
        self.roots = roots

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in FACTORIES and kwargs.get("device") is None:
            if func is torch.as_tensor and args and isinstance(args[0], torch.Tensor):
                kwargs["device"] = args[0].device  # as_tensor keeps a tensor where it is: not a new tensor
            else:
                frame = sys._getframe(1)
                while frame is not None and _is_under(frame.f_code.co_filename, (TORCH_ROOT,)):
                    frame = frame.f_back
                if frame is not None and _is_under(frame.f_code.co_filename, self.roots):
                    raise DeviceGuardError(f"torch.{func.__name__} without device= at {frame.f_code.co_filename}:"
                                           f"{frame.f_lineno} ({frame.f_code.co_name})")
        return func(*args, **kwargs)


def clear_spectral_caches() -> None:
    """Forget the cached DCT bases, so that the guarded call builds them again."""
    spectral._cached_dct_matrix.cache_clear()
    spectral._cached_dct_matrix_t.cache_clear()


@contextlib.contextmanager
def device_guard(*extra_roots: Path):
    """Default device `meta` and no factory call without `device=` from the package (or `extra_roots`)."""
    clear_spectral_caches()
    roots = (PACKAGE_ROOT,) + tuple(Path(root).resolve() for root in extra_roots)
    with torch.device("meta"), _FactoryDeviceCheck(roots):
        yield


def as_comparable(value):
    """Outputs as nested tuples of tensors (PIL images and arrays become tensors); `None` and numbers kept."""
    if isinstance(value, dict):  # ModelOutput too
        return tuple((key, as_comparable(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(as_comparable(item) for item in value)
    if isinstance(value, PIL.Image.Image):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def assert_same(first, second) -> None:
    first, second = as_comparable(first), as_comparable(second)
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.device == second.device and first.dtype == second.dtype
        assert torch.equal(first, second), "guarded and unguarded outputs differ"
    elif isinstance(first, tuple):
        assert isinstance(second, tuple) and len(first) == len(second)
        for a, b in zip(first, second):
            assert_same(a, b)
    else:
        assert first == second


def check_guarded(call, seed: int = 0):
    """Run `call` under the guard, then without it (the global RNG reseeded before each), assert identical outputs
    and return them. The guarded run comes first, so that lazily built tables are built under the guard."""
    torch.manual_seed(seed)
    with device_guard():
        guarded = call()
    torch.manual_seed(seed)
    reference = call()
    assert_same(guarded, reference)
    return guarded


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# The guard itself: it catches a planted mistake and lets correct code through
# ---------------------------------------------------------------------------------------------------------------


def _mask_with_cpu_arange(self, num_tokens: torch.Tensor, length: int):
    """`SpectralTokenizerDecoder.attention_mask` with the classic mistake: `torch.arange(length)` without device."""
    present = torch.arange(length) < num_tokens.unsqueeze(1)  # planted bug: on the CPU whatever the model's device
    keys = torch.cat([present.new_ones(present.shape[0], self.num_image_tokens), present], dim=1)
    return keys[:, None, None, :].expand(-1, 1, self.num_image_tokens + length, -1)


def _mask_with_device_arange(self, num_tokens: torch.Tensor, length: int):
    present = torch.arange(length, device=num_tokens.device) < num_tokens.unsqueeze(1)
    keys = torch.cat([present.new_ones(present.shape[0], self.num_image_tokens), present], dim=1)
    return keys[:, None, None, :].expand(-1, 1, self.num_image_tokens + length, -1)


@pytest.fixture
def tokenizer_and_codes():
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("tiny-32", causal=False)
    tokenizer = SpectralTokenizer(config).eval()
    images = torch.rand(2, 3, 32, 32, generator=seeded(1)) * 2 - 1
    return tokenizer, tokenizer.encode(images).codes


def test_guard_catches_a_planted_factory_call_without_device(monkeypatch, tokenizer_and_codes):
    tokenizer, codes = tokenizer_and_codes
    prefix = torch.tensor([3, 16])
    monkeypatch.setattr(SpectralTokenizerDecoder, "attention_mask", _mask_with_cpu_arange)
    planted = tokenizer.decode(codes, prefix).reconstruction  # invisible on the CPU alone
    # the meta default device: the CPU arange becomes a meta tensor that cannot mix with the model's CPU tensors
    with pytest.raises(RuntimeError, match="meta"), device_guard():
        tokenizer.decode(codes, prefix)
    # the factory check, with this file counted as package code: the exact call site
    with pytest.raises(DeviceGuardError, match=r"torch\.arange without device= at .*test_device_guard\.py:\d+ "
                                               r"\(_mask_with_cpu_arange\)"):
        with device_guard(Path(__file__)):
            tokenizer.decode(codes, prefix)
    # the same function with device= passes both checks and gives the same images
    monkeypatch.setattr(SpectralTokenizerDecoder, "attention_mask", _mask_with_device_arange)
    with device_guard(Path(__file__)):
        fixed = tokenizer.decode(codes, prefix).reconstruction
    assert torch.equal(fixed, planted)


def test_guard_catches_a_cpu_scalar_tensor_and_allows_what_keeps_the_device(monkeypatch, tokenizer_and_codes):
    tokenizer, codes = tokenizer_and_codes
    original = SpectralTokenizerDecoder.unpatchify

    def unpatchify_with_scalar(self, patches):
        return original(self, patches) * torch.tensor(1.0)  # planted: a 0-dim CPU tensor (CUDA accepts it, with a
        # host-to-device copy at every call)

    monkeypatch.setattr(SpectralTokenizerDecoder, "unpatchify", unpatchify_with_scalar)
    with pytest.raises(DeviceGuardError, match=r"torch\.tensor without device="):
        with device_guard(Path(__file__)):
            tokenizer.decode(codes)

    x = torch.rand(3)
    with device_guard(Path(__file__)):
        assert torch.as_tensor(x) is x  # keeps the tensor: allowed, and not moved to meta
        assert torch.arange(3, device=x.device).device == x.device
        assert torch.zeros_like(x).device == x.device
        with pytest.raises(DeviceGuardError):
            torch.ones(3)
    with device_guard():  # outside package code only the meta default applies
        assert torch.ones(3).device.type == "meta"
    assert torch.ones(3).device.type == "cpu"  # and the default is restored afterwards


# ---------------------------------------------------------------------------------------------------------------
# Models under the guard: identical outputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixel_decoder", [False, True], ids=["linear-head", "pixel-decoder"])
def test_tokenizer_entry_points_under_the_guard(pixel_decoder):
    overrides = dict(patch_size=4, pixel_decoder=dict(TINY_PIXEL_DECODER)) if pixel_decoder else {}
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", **overrides)).eval()
    images = torch.rand(2, 3, 32, 32, generator=seeded(1)) * 2 - 1
    prefix = torch.tensor([3, 16])

    codes = check_guarded(lambda: tokenizer.encode(images)).codes
    check_guarded(lambda: tokenizer.decode(codes, prefix))
    check_guarded(lambda: tokenizer.decode(codes[:, :5], num_tokens=4))
    step = check_guarded(lambda: tokenizer.train()(images, generator=seeded(2)))  # random prefixes from generator
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    check_guarded(lambda: tokenizer(images))  # random prefixes from the global RNG (reseeded)
    check_guarded(lambda: tokenizer(images, num_tokens=prefix))
    if pixel_decoder:
        check_guarded(lambda: tokenizer(images, decode_pixels=False))
        probabilities = torch.softmax(torch.randn(2, 32, 8, 8, generator=seeded(3)), dim=1)
        check_guarded(lambda: tokenizer.pixel_decode(probabilities))


def test_maskgit_vqgan_entry_points_under_the_guard():
    torch.manual_seed(0)
    model = MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny")).eval()
    images = torch.rand(2, 3, 16, 16, generator=seeded(1))
    probabilities = torch.softmax(torch.randn(2, 8, 8, 32, generator=seeded(2)), dim=-1)
    codes = check_guarded(lambda: model.encode(images)).codes
    check_guarded(lambda: model.decode_codes(codes))
    check_guarded(lambda: model.decode_soft_codes(probabilities))
    check_guarded(lambda: model.decode_soft_codes(probabilities.movedim(-1, 1), dim=1, clamp=False))
    check_guarded(lambda: model.train()(images))


def tiny_far(**overrides) -> FARTransformer:
    values = dict(latent_channels=2, latent_size=4, num_classes=5, class_buffer_size=2, hidden_size=32,
                  encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=32,
                  diffusion_batch_mul=2)
    values.update(overrides)
    model = FARTransformer(FARConfig(**values))
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero AdaLN / output layers, so the head's output depends on its inputs
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("text", [False, True], ids=["class", "text"])
def test_far_forward_and_sample_under_the_guard(text):
    model = tiny_far(cross_attention_dim=16) if text else tiny_far()  # fresh: tables are built under the guard
    latents = torch.randn(2, 2, 4, 4, generator=seeded(1))
    labels = torch.tensor([1, 4])
    text_inputs = {}
    if text:
        text_inputs = dict(encoder_hidden_states=torch.randn(2, 3, 16, generator=seeded(2)),
                           encoder_attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    step = check_guarded(lambda: model.train()(latents, class_labels=labels, generator=seeded(3), **text_inputs))
    assert step.mask.any() and step.loss.dtype == torch.float32  # the frequency-aware mask was drawn
    check_guarded(lambda: model(latents, class_labels=[1, 4], **text_inputs))  # global RNG, labels as a list
    levels = torch.tensor([0, 3])
    check_guarded(lambda: model(latents, class_labels=labels, levels=levels, generator=seeded(4), **text_inputs))
    model.eval()
    fast = dict(num_steps=2, diffusion_steps=3)
    check_guarded(lambda: model.sample(labels, generator=seeded(5), **fast, **text_inputs))
    check_guarded(lambda: model.sample([1, 4], guidance_scale=2.0, guidance_schedule="linear", mask_schedule="cosine",
                                       temperature=(0.8, 1.0), generator=seeded(6), **fast, **text_inputs))
    check_guarded(lambda: model.sample(labels, **fast, **text_inputs))  # global RNG


def test_far_diffusion_tables_are_built_on_the_requested_device():
    scheduler = build_noise_scheduler(tiny_far().config)
    assert scheduler.alphas_cumprod.device.type == "cpu"
    with torch.device("meta"):  # whatever the default device, the scheduler's own tables stay on the CPU
        assert build_noise_scheduler(tiny_far().config).alphas_cumprod.device.type == "cpu"
    timesteps = torch.tensor([0, 499, 999])
    tables = DiffusionTables(scheduler.alphas_cumprod, timesteps, device="meta")  # e.g. the model's device
    assert tables.device.type == "meta" and tables.timesteps.device.type == "meta"
    assert all(table.device.type == "meta" for table in (tables.sqrt_recip_acp, tables.posterior_log_variance,
                                                         tables.mean_coef_x0, tables.mean_coef_xt, tables.log_betas))
    on_cpu = DiffusionTables(scheduler.alphas_cumprod, timesteps)
    assert on_cpu.device.type == "cpu" and on_cpu.sqrt_recip_acp.dtype == torch.float64


def test_precision_helpers():
    assert high_precision_dtype("cpu") == high_precision_dtype("cuda") == torch.float64
    assert high_precision_dtype("mps") == torch.float32  # MPS has no float64
    x = torch.rand(4, 4)
    with bf16_autocast():
        assert (x @ x).dtype == BF16
        with no_autocast(x.device):
            assert (x @ x).dtype == torch.float32
        with no_autocast("meta"):  # no autocast on meta: nothing to switch off
            assert (x @ x).dtype == BF16


def test_codebook_restarter_under_the_guard():
    codes = torch.zeros(4, 16, dtype=torch.long)  # one live code: every other code is dead
    latents = torch.randn(4, 16, 8, generator=seeded(1))

    template = torch.nn.Embedding(256, 8)
    with torch.no_grad():
        template.weight.zero_()

    def restart():
        codebook = copy.deepcopy(template)
        restarter = CodebookRestarter(256, decay=0.1, seed=3)  # dead codes show at the second step
        restarted = restarter.step(codebook, codes, latents)
        restarted += restarter.step(codebook, codes, latents)
        return torch.tensor(restarted, device="cpu"), codebook.weight.detach(), restarter.usage

    restarted, weight, _ = check_guarded(restart)
    assert restarted > 0 and weight.abs().sum() > 0


def tiny_generator() -> SpectralARForCausalLM:
    torch.manual_seed(0)
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny")).eval()
    with torch.no_grad():  # spread the weights so that sampling depends on them
        for name, parameter in model.named_parameters():
            if not name.endswith("log_scale"):
                parameter.normal_(0.0, 0.15)
    return model


# modeling_spectralar.py is being rewritten (sampling loop, KV cache): these cover it as it stands.
GENERATOR_CALLS = {
    "forward-with-labels": lambda m, c, l: m(input_ids=c, class_labels=l, labels=c)[:2],  # (loss, logits)
    "sample": lambda m, c, l: m.sample(l, generator=seeded(1)),
    "sample-cfg": lambda m, c, l: m.sample(l, guidance_scale=2.0, generator=seeded(2)),
    "sample-cfg-linear-top-k-top-p": lambda m, c, l: m.sample([3, 7], guidance_scale=3.0, guidance_schedule="linear",
                                                              temperature=0.9, top_k=20, top_p=0.8,
                                                              generator=seeded(3)),
    "sample-prefix": lambda m, c, l: m.sample(l, prefix_codes=c[:, :4], generator=seeded(4)),
    "sample-global-rng": lambda m, c, l: m.sample(l, top_k=5),
    "generate-greedy": lambda m, c, l: m.generate(m.start_token_ids(l), max_new_tokens=16, do_sample=False),
    "generate-sampled-cfg": lambda m, c, l: m.generate(m.start_token_ids(l), max_new_tokens=16, do_sample=True,
                                                       top_k=10, guidance_scale=2.0),
}


@pytest.mark.parametrize("name", list(GENERATOR_CALLS))
def test_generator_entry_points_under_the_guard(name):
    model = tiny_generator()
    codes = torch.randint(0, 256, (2, 16), generator=seeded(0))
    labels = torch.tensor([3, 7])
    check_guarded(lambda: GENERATOR_CALLS[name](model, codes, labels))


# ---------------------------------------------------------------------------------------------------------------
# Pipelines under the guard (shipped checkpoints)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spectralar_pipe() -> SpectralARPipeline:
    pipe = SpectralARPipeline.from_pretrained(SPECTRALAR_DEMO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def far_pipe() -> FARPipeline:
    pipe = FARPipeline.from_pretrained(FAR_DEMO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_spectralar_pipeline_under_the_guard(spectralar_pipe):
    pipe = spectralar_pipe
    images = torch.rand(2, 1, 32, 32, generator=seeded(1))
    pil = PIL.Image.fromarray((images[0, 0].numpy() * 255).astype(np.uint8))
    output = check_guarded(lambda: pipe(["Sneaker", 8], generator=seeded(2), return_intermediates=True))
    assert len(output.images) == 2 and len(output.intermediates) == 32
    labels, prefix = torch.tensor([7, 8]), torch.tensor([4, 32])
    check_guarded(lambda: pipe(labels, guidance_scale=2.0, top_k=50, top_p=0.9, num_tokens=8,
                               generator=seeded(3), output_type="pt"))
    check_guarded(lambda: pipe(np.array([1]), output_type="np"))  # global RNG
    check_guarded(lambda: pipe.encode([pil, pil]))
    codes = check_guarded(lambda: pipe.encode(images))
    check_guarded(lambda: pipe.decode(codes, num_tokens=prefix, output_type="np"))
    check_guarded(lambda: pipe.reconstruct(images, num_tokens=6, output_type="pt"))
    check_guarded(lambda: pipe.super_resolve(images[:1], class_labels="Bag", generator=seeded(4)))
    check_guarded(lambda: pipe.super_resolve(images, method="patch", keep_tokens=8, generator=seeded(5),
                                             output_type="pt"))


def test_far_pipeline_under_the_guard(far_pipe):
    pipe = far_pipe
    fast = dict(num_inference_steps=2, diffusion_steps=3)
    output = check_guarded(lambda: pipe(["Sneaker", 8], generator=seeded(1), return_intermediates=True, **fast))
    assert len(output.images) == 2 and len(output.intermediates) == 2
    labels, images = torch.tensor([7]), torch.rand(2, 3, 32, 32, generator=seeded(3))
    check_guarded(lambda: pipe(labels, guidance_scale=2.0, mask_schedule="cosine", generator=seeded(2),
                               output_type="pt", **fast))
    check_guarded(lambda: pipe([3], output_type="latent", **fast))  # global RNG
    latents = check_guarded(lambda: pipe.encode(images))
    check_guarded(lambda: pipe.decode_latents(latents))


# ---------------------------------------------------------------------------------------------------------------
# bfloat16 weights
# ---------------------------------------------------------------------------------------------------------------


def check_images(output, batch: int) -> None:
    """float32 images in [0, 1] for "pt" / "np", RGB-or-L PIL images for "pil"."""
    if isinstance(output, list):
        assert len(output) == batch and all(isinstance(image, PIL.Image.Image) for image in output)
        return
    array = torch.as_tensor(output)
    assert array.dtype == torch.float32 and array.shape[0] == batch
    assert torch.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")  # diffusers 0.42 also takes dtype=
@pytest.mark.parametrize("load", ["torch_dtype", "dtype", "to"])
def test_spectralar_pipeline_with_bf16_weights(load, spectralar_pipe):
    if load == "to":
        pipe = SpectralARPipeline.from_pretrained(SPECTRALAR_DEMO).to(BF16)
    else:
        pipe = SpectralARPipeline.from_pretrained(SPECTRALAR_DEMO, **{load: BF16})
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.dtype == BF16 and pipe.transformer.dtype == BF16
    for output_type in ("pt", "np", "pil"):
        check_images(pipe([7, 8], guidance_scale=2.0, generator=seeded(0), output_type=output_type).images, 2)
    output = check_guarded(lambda: pipe([1], generator=seeded(1), output_type="pt", return_intermediates=True))
    check_images(output.images, 1)
    check_images(output.intermediates[0], 1)
    images = torch.rand(2, 1, 32, 32, generator=seeded(2))
    reconstruction = check_guarded(lambda: pipe.reconstruct(images, output_type="pt"))
    check_images(reconstruction, 2)
    # the bf16 tokenizer sees the images as the float32 one does, up to bf16 rounding of its weights
    reference = spectralar_pipe.reconstruct(images, output_type="pt")
    assert (reconstruction - reference).abs().mean() < 0.05
    check_images(pipe.super_resolve(images[:1], generator=seeded(3), output_type="np").images, 1)


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated:FutureWarning")
@pytest.mark.parametrize("load", ["torch_dtype", "to"])
def test_far_pipeline_with_bf16_weights(load):
    if load == "to":
        pipe = FARPipeline.from_pretrained(FAR_DEMO).to(BF16)
    else:
        pipe = FARPipeline.from_pretrained(FAR_DEMO, torch_dtype=BF16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.dtype == BF16 and pipe.transformer.dtype == BF16
    fast = dict(num_inference_steps=2, diffusion_steps=3)
    for output_type in ("pt", "np", "pil"):
        check_images(pipe([7, 8], guidance_scale=2.0, generator=seeded(0), output_type=output_type, **fast).images,
                     2)
    output = check_guarded(lambda: pipe([1], mask_schedule="cosine", generator=seeded(1), output_type="pt",
                                        return_intermediates=True, **fast))
    check_images(output.images, 1)
    check_images(output.intermediates[0], 1)
    assert output.latents.dtype == torch.float32 and torch.isfinite(output.latents).all()
    latents = pipe.encode(torch.rand(1, 3, 32, 32, generator=seeded(2)))
    assert torch.isfinite(latents).all()
    loss = pipe.transformer.train()(latents, class_labels=[3], generator=seeded(3)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------------------------
# bf16 autocast: float32 where precision needs it
# ---------------------------------------------------------------------------------------------------------------


def bf16_autocast():
    return torch.autocast("cpu", dtype=BF16)


def near_ties(codebook: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors just off the midpoint of two random codes, and their nearest codes by float64 distances:
    `(vectors (count, D), nearest (count,))`. Distances with the product `z @ e.T` in bfloat16 (what autocast does
    to it) get many of them wrong; float32 ones do not."""
    first = torch.randint(0, codebook.shape[0], (count,), generator=generator)
    second = (first + 1 + torch.randint(0, codebook.shape[0] - 1, (count,), generator=generator)) % codebook.shape[0]
    vectors = (codebook[first] + codebook[second]) / 2 + 1e-4 * (codebook[first] - codebook[second])
    return vectors, torch.cdist(vectors.double(), codebook.double()).argmin(dim=1)


def codes_with_a_bf16_product(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    product = (vectors.to(BF16) @ codebook.to(BF16).T).float()
    return (vectors.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * product).argmin(dim=1)


def test_vq_nearest_codes_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    quantizer = MaskGITVQGANQuantizer(codebook_size=64, codebook_dim=16)
    with torch.no_grad():
        quantizer.embedding.weight.normal_()
    codebook = quantizer.embedding.weight.detach()
    vectors, nearest = near_ties(codebook, 256, seeded(1))
    assert (codes_with_a_bf16_product(vectors, codebook) != nearest).sum() > 10  # the data is sensitive to bf16
    latents = vectors.view(4, 8, 8, 16).permute(0, 3, 1, 2)
    probabilities = torch.softmax(torch.randn(1, 2, 2, 64, generator=seeded(2)), dim=-1)
    with bf16_autocast():
        distances = quantizer.distances(vectors)
        _, codes, commitment, codebook_loss = quantizer(latents)
        soft = quantizer.soft_lookup(probabilities)
    assert distances.dtype == torch.float32 and torch.equal(distances.argmin(1), nearest)
    assert torch.equal(codes.flatten(), nearest)
    assert commitment.dtype == codebook_loss.dtype == torch.float32
    assert soft.dtype == torch.float32 and torch.equal(soft, quantizer.soft_lookup(probabilities))


@pytest.mark.parametrize("l2_normalize", [True, False], ids=["cosine", "euclidean"])
def test_tokenizer_quantizer_codes_under_bf16_autocast_equal_float32(l2_normalize):
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("tiny-32", l2_normalize_codebook=l2_normalize)
    tokenizer = SpectralTokenizer(config).eval()
    with torch.no_grad():
        tokenizer.quantizer.codebook.weight.normal_()
    codebook = tokenizer.quantizer.normalized_codebook().detach()
    vectors, nearest = near_ties(codebook, 128, seeded(1))
    assert (codes_with_a_bf16_product(vectors, codebook) != nearest).sum() > 5  # the data is sensitive to bf16
    latents = vectors.view(8, 16, -1)
    quantized, codes, commitment, codebook_loss = tokenizer.quantizer(latents)
    with bf16_autocast():
        quantized_bf16, codes_bf16, commitment_bf16, codebook_bf16 = tokenizer.quantizer(latents)
    assert torch.equal(codes.flatten(), nearest) and torch.equal(codes_bf16, codes)
    assert torch.equal(quantized_bf16, quantized) and quantized_bf16.dtype == torch.float32
    assert torch.equal(commitment_bf16, commitment) and torch.equal(codebook_bf16, codebook_loss)
    images = torch.rand(2, 3, 32, 32, generator=seeded(2)) * 2 - 1
    with bf16_autocast():  # the encoder runs in bf16, the nearest-code search on its output in float32
        encoded = tokenizer.encode(images)
    assert encoded.latents.dtype == BF16
    assert torch.equal(encoded.codes, tokenizer.quantizer(encoded.latents.float())[1])


def test_dct_and_lowpass_under_bf16_autocast():
    x = torch.rand(2, 3, 32, 32, generator=seeded(0)) * 2 - 1
    omega = torch.tensor([3, 17])
    reference = dct_2d(x), idct_2d(x), lowpass(x, omega), lowpass(x, 5), spectral_target(x, list(range(1, 33)), 7)
    with bf16_autocast():
        autocast = dct_2d(x), idct_2d(x), lowpass(x, omega), lowpass(x, 5), spectral_target(x, list(range(1, 33)), 7)
    for ours, expected in zip(autocast, reference):  # float32 inputs: exactly the float32 results
        assert ours.dtype == torch.float32 and torch.equal(ours, expected)
    # a bf16 input: transformed in float32, so equal to the float32 DCT of the same values up to the output rounding
    x_bf16 = x.to(BF16)
    with bf16_autocast():
        coefficients = dct_2d(x_bf16)
    expected = dct_2d(x_bf16.float())
    assert coefficients.dtype == BF16
    assert torch.allclose(coefficients.float(), expected, rtol=2 ** -8, atol=1e-6)
    assert torch.equal(coefficients, expected.to(BF16))


def test_dct_basis_first_built_under_inference_mode_still_trains():
    clear_spectral_caches()
    with torch.inference_mode():
        dct_2d(torch.rand(1, 12, 12))
        idct_2d(torch.rand(1, 12, 12))
    x = torch.rand(1, 12, 12, requires_grad=True)
    (dct_2d(x).sum() + idct_2d(x).sum() + lowpass(x.unsqueeze(0), 4).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_training_losses_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32"))
    vqgan = MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny"))
    far = tiny_far()
    generator = tiny_generator().train()
    discriminator, lecam = PatchDiscriminator(3, base_channels=8, num_stages=2, num_groups=4), LeCAMRegularizer()
    images = torch.rand(2, 3, 32, 32, generator=seeded(1)) * 2 - 1
    codes = torch.randint(0, 256, (2, 16), generator=seeded(2))
    with bf16_autocast():
        step = tokenizer(images, generator=seeded(3))
        vq_step = vqgan(images[:, :, :16, :16] * 0.5 + 0.5)
        far_step = far(torch.randn(2, 2, 4, 4, generator=seeded(4)), class_labels=[0, 1], generator=seeded(5))
        generator_loss = generator(input_ids=codes, class_labels=torch.tensor([1, 2]), labels=codes).loss
        real_logits, fake_logits = discriminator(images), discriminator(step.reconstruction)
        adversarial = (hinge_discriminator_loss(real_logits, fake_logits), hinge_generator_loss(fake_logits),
                       lecam(real_logits, fake_logits))
    assert real_logits.dtype == BF16  # autocast is really on
    losses = [step.loss, step.reconstruction_loss, step.commitment_loss, step.codebook_loss, vq_step.loss,
              vq_step.reconstruction_loss, vq_step.quantization_loss, far_step.loss, far_step.mse_loss,
              far_step.vb_loss, generator_loss, *adversarial]
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    # the spectral target is the float32 low-pass image, not a bf16 matmul of it
    assert torch.equal(step.target, spectral_target(images, tokenizer.config.omega, step.num_tokens))


# ---------------------------------------------------------------------------------------------------------------
# No `.cuda(` anywhere
# ---------------------------------------------------------------------------------------------------------------


def _cuda_calls(path: Path) -> list[int]:
    """Lines of `path` with a `.cuda(` call: in Python code (not comments or strings, which may describe other code)
    for .py files, anywhere for other text files."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return [number for number, line in enumerate(text.splitlines(), 1) if ".cuda(" in line]
    tokens = [token for token in tokenize.generate_tokens(io.StringIO(text).readline)
              if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
    return [name.start[0] for dot, name, paren in zip(tokens, tokens[1:], tokens[2:])
            if dot.string == "." and name.string == "cuda" and paren.string == "("]


def test_no_cuda_calls_anywhere(tmp_path):
    probe = tmp_path / "probe.py"  # the checker finds a call in code and skips mentions in strings and comments
    probe.write_text('"""calls `.cuda()`"""\nx = model.cuda()  # not .cuda()\ny = ".cuda(0)"\nz = x .cuda (1)\n')
    assert _cuda_calls(probe) == [2, 4]
    suffixes = {".py", ".sh", ".md", ".txt", ".ipynb", ".cfg", ".toml", ".yaml", ".yml"}
    files = [path for folder in ("src", "examples", "benchmarks", "conversion") for path in (ROOT / folder).rglob("*")
             if path.is_file() and path.suffix in suffixes]
    assert any(path.name == "modeling_far.py" for path in files)  # the walk found the sources
    found = {str(path.relative_to(ROOT)): lines for path in files if (lines := _cuda_calls(path))}
    assert not found, f"`.cuda(` calls (use `.to(device)` with the model's device): {found}"
