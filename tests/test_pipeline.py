"""SpectralARPipeline end to end with tiny random components: images, determinism, intermediates, truncation,
super-resolution, save/load in a fresh process, labels, the push path and bad inputs. The low band of
super-resolution is checked with the trained demo tokenizer (a random one reconstructs nothing)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.spectral import dct_2d, idct_2d, lowpass

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "spectralar-fashion-mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_pipeline(tokens_per_step: int = 1, **generator_overrides) -> SpectralARPipeline:
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval()
    config = SpectralARConfig.from_preset("tiny", tokens_per_step=tokens_per_step, image_size=32, num_channels=3,
                                          id2label=dict(enumerate(NAMES)), **generator_overrides)
    transformer = SpectralARForCausalLM(config).eval()
    with torch.no_grad():  # spread the weights so that classes and codes visibly matter
        for name, parameter in transformer.named_parameters():
            if not name.endswith("log_scale"):
                parameter.normal_(0.0, 0.15)
    pipe = SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline()


def arrays(images):
    return [np.asarray(image) for image in images]


def test_pil_images_number_size_mode(pipe):
    output = pipe([0, 7, 8], generator=torch.Generator().manual_seed(0))
    assert len(output.images) == 3
    assert all(isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
               for image in output.images)
    assert output.codes.shape == (3, 16)
    np_images = pipe([0, 7], output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np_images.shape == (2, 32, 32, 3) and np_images.min() >= 0 and np_images.max() <= 1
    pt_images = pipe([0, 7], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert pt_images.shape == (2, 3, 32, 32)
    assert np.allclose(pt_images.permute(0, 2, 3, 1).numpy(), np_images)


def test_same_seed_same_images_other_seed_differs(pipe):
    first = arrays(pipe([1, 2], generator=torch.Generator().manual_seed(5)).images)
    second = arrays(pipe([1, 2], generator=torch.Generator().manual_seed(5)).images)
    third = arrays(pipe([1, 2], generator=torch.Generator().manual_seed(6)).images)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, third))


def test_class_names_and_ids_are_equivalent(pipe):
    assert pipe.get_label_ids(["Sneaker", "Bag"]) == [7, 8]
    by_name = arrays(pipe(["Sneaker", "Bag"], generator=torch.Generator().manual_seed(1)).images)
    by_id = arrays(pipe(torch.tensor([7, 8]), generator=torch.Generator().manual_seed(1)).images)
    assert all(np.array_equal(a, b) for a, b in zip(by_name, by_id))
    with pytest.raises(ValueError, match="did you mean"):
        pipe(["Sneakr"])


@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_intermediates_one_per_step_last_is_final(tokens_per_step):
    pipe = make_pipeline(tokens_per_step)
    output = pipe([3, 4], generator=torch.Generator().manual_seed(0), return_intermediates=True, output_type="pt")
    assert len(output.intermediates) == 16 // tokens_per_step
    torch.testing.assert_close(output.intermediates[-1], output.images)
    step = 2  # the image after step s is the decode of the first (s + 1) * k codes
    expected = pipe.tokenizer.decode(output.codes, (step + 1) * tokens_per_step).reconstruction
    torch.testing.assert_close(output.intermediates[step], (expected / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_truncation_decodes_k_tokens(pipe):
    full = pipe([5, 6], generator=torch.Generator().manual_seed(2), output_type="pt")
    truncated = pipe([5, 6], num_tokens=6, generator=torch.Generator().manual_seed(2), output_type="pt")
    assert truncated.codes.shape == (2, 6)
    assert torch.equal(truncated.codes, full.codes[:, :6])  # same seed: a prefix of the full sequence
    expected = (pipe.tokenizer.decode(full.codes, 6).reconstruction / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(truncated.images, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(truncated.images, full.images)


def test_callback_sees_every_step(pipe):
    seen = []
    pipe([1], callback_on_step_end=lambda p, step, t, kwargs: seen.append((step, kwargs["codes"].shape[1])))
    assert seen == [(s, s + 1) for s in range(16)]
    with pytest.raises(ValueError, match="may not replace codes"):
        pipe([1], callback_on_step_end=lambda p, step, t, kwargs: {"codes": kwargs["codes"] + 0})


def dct_upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Ideal band-limited upsampling: the DCT coefficients of an `S x S` image zero-padded to `scale * S`, scaled so
    that the (orthonormal) transform keeps the image's amplitude."""
    size = images.shape[-1]
    coefficients = torch.zeros(*images.shape[:-2], scale * size, scale * size, dtype=torch.float64)
    coefficients[..., :size, :size] = dct_2d(images.double()) * scale
    return idct_2d(coefficients)


def relative_lowpass_error(output: torch.Tensor, expected: torch.Tensor, omega: int) -> float:
    """`||lowpass(output) - lowpass(expected)|| / ||lowpass(expected) - mean||` over the whole batch."""
    low_output, low_expected = lowpass(output.double(), omega), lowpass(expected.double(), omega)
    return float((low_output - low_expected).norm() / (low_expected - low_expected.mean()).norm())


def spec_parts(pixels: torch.Tensor, scale: int, method: str) -> torch.Tensor:
    """The sub-images the docstring promises, row-major over (i, j): strided lattices or tiles."""
    sub = pixels.shape[-1] // scale
    if method == "stride":
        parts = [pixels[..., i::scale, j::scale] for i in range(scale) for j in range(scale)]
    else:
        parts = [pixels[..., sub * i : sub * (i + 1), sub * j : sub * (j + 1)]
                 for i in range(scale) for j in range(scale)]
    return torch.stack(parts, dim=1).flatten(0, 1)  # (B * scale^2, C, sub, sub), image-major


@pytest.mark.parametrize("method,scale", [("stride", 2), ("patch", 2), ("stride", 4), ("patch", 4)])
def test_super_resolve_size_and_kept_prefix(pipe, method, scale, monkeypatch):
    """The output has `scale * S` pixels; the kept prefix is what the tokenizer's encoder gives for each (upsampled)
    sub-image of the input, in the sub-images' order; the completion never alters it."""
    torch.manual_seed(0)
    pixels = lowpass(torch.rand(2, 3, 32, 32, dtype=torch.float64), 12).clamp(0, 1).float()  # smooth, in [0, 1]
    encoded = []
    encode = pipe.tokenizer.encode

    def recording_encode(images, *args, **kwargs):
        output = encode(images, *args, **kwargs)
        encoded.append((images.clone(), output.codes.clone()))
        return output

    monkeypatch.setattr(pipe.tokenizer, "encode", recording_encode)
    output = pipe.super_resolve(pixels, scale=scale, method=method, class_labels=["Pullover", "Bag"],
                                generator=torch.Generator().manual_seed(0), output_type="pt")
    assert output.images.shape == (2, 3, 32 * scale, 32 * scale)
    assert 0 <= output.images.min() and output.images.max() <= 1
    keep = sum(w <= 32 // scale for w in pipe.tokenizer.config.omega)
    assert output.kept_tokens == keep == {2: 12, 4: 8}[scale]
    assert output.codes.shape == (2 * scale**2, 16)

    (images, codes), = encoded  # one encoder call, on every sub-image of every input
    assert images.shape == (2 * scale**2, 3, 32, 32)
    assert torch.equal(output.codes[:, :keep], codes[:, :keep])
    # What was encoded is each sub-image of the input upsampled to S: equal to its ideal upsampling in the low band.
    expected = dct_upsample(spec_parts(pixels * 2 - 1, scale, method), scale)
    assert relative_lowpass_error(images, expected, 32 // scale // 2) < 0.05
    # The next-best candidates (the other split, the sub-images in another order) are far away.
    other = dct_upsample(spec_parts(pixels * 2 - 1, scale, "patch" if method == "stride" else "stride"), scale)
    assert relative_lowpass_error(images, other, 32 // scale // 2) > 0.3
    assert relative_lowpass_error(images, expected.flip(0), 32 // scale // 2) > 0.3


@pytest.fixture(scope="module")
def demo():
    pipe = SpectralARPipeline.from_pretrained(DEMO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("method,omega,tolerance", [("stride", 8, 0.25), ("patch", 4, 0.5)])
def test_super_resolve_keeps_the_low_frequencies_of_the_input(demo, method, omega, tolerance):
    """With the trained demo tokenizer, the 2x output's low band matches the input's ideal (DCT zero-padding)
    upsampling. Correct code measures ~0.06 (stride, omega 8) and ~0.3 (patch, omega 4: each tile is encoded on its
    own); tiles or lattices in the wrong place, transposed sub-images, a stride split reassembled as tiles (or the
    reverse), or no kept prefix all measure 0.6-1.5."""
    images = demo(["Bag", "Trouser", "Sneaker", "Dress", "Ankle boot"], output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    output = demo.super_resolve(images, scale=2, method=method, generator=torch.Generator().manual_seed(0),
                                output_type="pt")
    assert output.images.shape == (5, 1, 64, 64)
    error = relative_lowpass_error(output.images * 2 - 1, dct_upsample(images * 2 - 1, 2), omega)
    assert error < tolerance, f"low band of the {method} super-resolution is off by {error:.2f}"


@pytest.mark.parametrize("scale", [0, 1, -2, 1.5, 2.0, "2", 3, None, True])
def test_super_resolve_rejects_bad_scales(pipe, scale):
    with pytest.raises(ValueError, match="scale"):
        pipe.super_resolve(torch.rand(1, 3, 32, 32), scale=scale, class_labels=[0])


@pytest.mark.parametrize("method", ["tiles", "STRIDE", "", None, 2])
def test_super_resolve_rejects_bad_methods(pipe, method):
    with pytest.raises(ValueError, match="method"):
        pipe.super_resolve(torch.rand(1, 3, 32, 32), scale=2, method=method, class_labels=[0])


def test_super_resolve_reassembles_the_sub_images(pipe):
    """With every token kept, strided super-resolution of an image puts each decoded sub-image on its lattice."""
    image = torch.rand(1, 3, 32, 32)
    output = pipe.super_resolve(image, scale=2, method="stride", class_labels=[1], keep_tokens=16, output_type="pt")
    with torch.no_grad():
        decoded = pipe.tokenizer.decode(output.codes).reconstruction
    big = output.images[0]
    for index, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        torch.testing.assert_close(big[:, i::2, j::2], (decoded[index] / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_encode_decode_reconstruct_accept_pil_numpy_tensors(pipe):
    images = pipe([0, 1], generator=torch.Generator().manual_seed(0)).images
    codes_pil = pipe.encode(images)
    codes_np = pipe.encode(np.stack([np.asarray(image) for image in images]).astype(np.float32) / 255.0)
    codes_pt = pipe.encode(torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2) / 255.0)
    assert codes_pil.shape == (2, 16) and torch.equal(codes_pil, codes_np) and torch.equal(codes_pil, codes_pt)
    decoded = pipe.decode(codes_pil, num_tokens=4, output_type="pt")
    assert torch.allclose(decoded, pipe.reconstruct(images, num_tokens=4, output_type="pt"))


@pytest.mark.same_machine
def test_save_load_in_fresh_process_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["tokenizer"] == ["spectralar_hf", "SpectralTokenizer"]
    assert index["transformer"] == ["spectralar_hf", "SpectralARForCausalLM"]
    expected = pipe(["Bag", 0], generator=torch.Generator().manual_seed(9), output_type="np").images
    script = (
        "import numpy as np, torch\n"
        "from spectralar_hf import SpectralARPipeline\n"
        f"pipe = SpectralARPipeline.from_pretrained(r'{tmp_path / 'pipe'}')\n"
        "images = pipe(['Bag', 0], generator=torch.Generator().manual_seed(9), output_type='np').images\n"
        f"np.save(r'{tmp_path / 'images.npy'}', images)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert np.array_equal(np.load(tmp_path / "images.npy"), expected)


def test_mismatched_components_are_rejected():
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32"))
    cases = [
        (dict(vocab_size=512), "vocab_size 512 differs from the tokenizer's codebook_size 256"),
        (dict(num_image_tokens=32), "num_image_tokens 32 differs"),
        (dict(image_size=64), "trained for 64px images"),
        (dict(num_channels=1), "1-channel images"),
    ]
    for overrides, message in cases:
        transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", **overrides))
        with pytest.raises(ValueError, match=message):
            SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)
    pipe = make_pipeline()
    with pytest.raises(ValueError, match="codebook_size"):
        pipe.transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", vocab_size=300))


def test_bad_call_arguments(pipe):
    with pytest.raises(ValueError, match="class id out of range"):
        pipe([11])
    with pytest.raises(ValueError, match="num_tokens must be a multiple"):
        pipe([1], num_tokens=17)
    with pytest.raises(ValueError, match="scale must be an int >= 2"):
        pipe.super_resolve(torch.rand(1, 3, 32, 32), scale=3)
    with pytest.raises(ValueError, match="method must be"):
        pipe.super_resolve(torch.rand(1, 3, 32, 32), method="tiles")
    with pytest.raises(ValueError, match="no null class"):
        make_pipeline(class_dropout_prob=0.0).super_resolve(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no null class"):
        make_pipeline(class_dropout_prob=0.0)([1], guidance_scale=2.0)


def test_generation_config_provides_defaults(pipe, tmp_path):
    pipe.transformer.generation_config.do_sample = True
    pipe.transformer.generation_config.top_k = 1
    try:
        greedy = pipe([1, 2], output_type="pt").codes
        assert torch.equal(greedy, pipe.transformer.sample(torch.tensor([1, 2]), top_k=1))
        pipe.save_pretrained(tmp_path)
        loaded = SpectralARPipeline.from_pretrained(tmp_path)
        assert loaded.transformer.generation_config.top_k == 1
        assert torch.equal(loaded([1, 2], output_type="pt").codes, greedy)
    finally:
        pipe.transformer.generation_config.top_k = None
        pipe.transformer.generation_config.do_sample = None


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Replace the two Hub calls of `push_folder_to_hub` by a local folder per repository."""
    root = tmp_path / "hub"
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        (root / repo_id).mkdir(parents=True, exist_ok=True)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        import shutil

        shutil.copytree(folder_path, root / repo_id, dirs_exist_ok=True)
        uploads.append((repo_id, sorted(str(p.relative_to(folder_path)) for p in __import__("pathlib").Path(
            folder_path).rglob("*") if p.is_file())))
        return f"https://hub.local/{repo_id}/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return root, uploads


def test_push_pipeline_uploads_our_card_and_loads_back(pipe, fake_hub):
    root, uploads = fake_hub
    url = pipe.push_to_hub("me/tiny-spectralar", datasets=["zalando-datasets/fashion_mnist"], metrics={"gFID": 12.5})
    assert url.endswith("/commit/1")
    repo, files = uploads[0]
    assert repo == "me/tiny-spectralar"
    assert {"README.md", "model_index.json", "tokenizer/config.json", "tokenizer/model.safetensors",
            "transformer/config.json", "transformer/model.safetensors"} <= set(files)
    card = (root / repo / "README.md").read_text()
    assert "library_name: spectralar_hf" in card and "zalando-datasets/fashion_mnist" in card
    assert "gFID" in card and "12.5" in card and str(pipe.tokenizer.config.omega) in card
    loaded = SpectralARPipeline.from_pretrained(root / repo)
    expected = pipe([1, 2], generator=torch.Generator().manual_seed(4), output_type="np").images
    assert np.array_equal(loaded([1, 2], generator=torch.Generator().manual_seed(4), output_type="np").images, expected)


def test_push_components_upload_our_card(pipe, fake_hub):
    root, uploads = fake_hub
    pipe.tokenizer.push_to_hub("me/tok")
    pipe.transformer.push_to_hub("me/gen")
    assert {"README.md", "config.json", "model.safetensors"} <= set(uploads[0][1])
    assert "library_name: spectralar_hf" in (root / "me/tok/README.md").read_text()
    assert "omega = [1, 2" in (root / "me/tok/README.md").read_text()
    assert "AutoModelForCausalLM" in (root / "me/gen/README.md").read_text()
    loaded = SpectralTokenizer.from_pretrained(root / "me/tok")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pipe.tokenizer.state_dict().values()))


def test_vqgan_and_titok_tokenizer_cards_describe_what_they_are(fake_hub):
    from spectralar_hf import MASKGIT_VQGAN_PRESETS, MaskGITVQGAN, MaskGITVQGANConfig

    root, _ = fake_hub
    MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny")).push_to_hub("me/vqgan")
    card = (root / "me/vqgan/README.md").read_text()
    assert "`MaskGITVQGAN` | 16x16x3 images in [0, 1], downsampling 2 (8x8 codes)" in card
    assert "MaskGITVQGAN.from_pretrained(\"me/vqgan\")" in card and "--proxy_teacher" in card
    assert "tokenizer.encode(pixel_values)" not in card and "omega = [" not in card  # not a spectral tokenizer's
    assert "16x16 grid of codes" not in card and "8x8 grid of codes" in card
    loaded = MaskGITVQGAN.from_pretrained(root / "me/vqgan")
    assert all(getattr(loaded.config, name) == value for name, value in MASKGIT_VQGAN_PRESETS["tiny"].items())

    titok = SpectralTokenizerConfig.from_preset("tiny-32", patch_size=4, class_token=True, causal=False,
                                                spectral_supervision=False, legacy_latent_projection=True,
                                                pixel_decoder=dict(hidden_channels=32, channel_mult=[1, 1, 2],
                                                                   num_res_blocks=1, z_channels=8, codebook_size=32))
    SpectralTokenizer(titok).push_to_hub("me/titok")
    card = (root / "me/titok/README.md").read_text()
    assert ("causal mask off, spectral supervision off, class token, TiTok's legacy latent projection, pixel decoder: "
            "MaskGIT-VQGAN over 32 proxy codes |") in card


def test_model_card_template_is_the_repository_model_card():
    from pathlib import Path

    from spectralar_hf.hub import model_card_template

    assert (Path(__file__).parents[1] / "MODEL_CARD.md").read_text() == model_card_template()
