"""SpectralTokenizer: config, masks (causality), prefixes, round trips and input checks."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.spectral import lowpass, omega_schedule


# ----------------------------------------------------------------------------------------------- config


def test_titok_b64_preset_matches_paper():
    config = SpectralTokenizerConfig.from_preset("titok-b64")
    assert (config.image_size, config.patch_size, config.num_latent_tokens) == (256, 16, 64)
    assert (config.encoder_hidden_size, config.encoder_num_hidden_layers, config.encoder_num_attention_heads) == (
        768, 12, 12)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        768, 12, 12)
    assert (config.codebook_size, config.token_dim, config.l2_normalize_codebook) == (4096, 12, True)
    assert config.commitment_cost == 0.25
    assert config.omega == omega_schedule(64, 256)  # Eq. 9
    assert config.spectral_supervision and config.causal


def test_config_builds_omega_from_name_and_accepts_list(tmp_path):
    uniform = SpectralTokenizerConfig.from_preset("tiny-32", omega="uniform")
    assert uniform.omega == omega_schedule(16, 32, "uniform")
    explicit = list(range(2, 33, 2))
    config = SpectralTokenizerConfig.from_preset("tiny-32", omega=explicit)
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["omega"] == explicit  # the explicit list is what config.json stores
    assert AutoConfig.from_pretrained(tmp_path).omega == explicit


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(image_size=250, patch_size=16), "image_size 250 is not divisible by patch_size 16"),
        (dict(num_channels=2), "num_channels must be 1"),
        (dict(omega=[1, 2, 3]), "3 levels but there are 16 tokens"),
        (dict(omega="cosine"), "Unknown omega schedule"),
        (dict(encoder_hidden_size=65), "not divisible by encoder_num_attention_heads"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        SpectralTokenizerConfig.from_preset("tiny-32", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown tokenizer preset"):
        SpectralTokenizerConfig.from_preset("titok-xxl")


# ----------------------------------------------------------------------------------------------- encode / decode


def test_shapes_and_dtypes(tiny_tokenizer, images):
    encoded = tiny_tokenizer.encode(images)
    assert encoded.codes.shape == (4, 16) and encoded.codes.dtype == torch.int64
    assert encoded.quantized.shape == (4, 16, 8)
    assert encoded.codes.min() >= 0 and encoded.codes.max() < 256
    decoded = tiny_tokenizer.decode(encoded.codes, num_tokens=5)
    assert decoded.reconstruction.shape == (4, 3, 32, 32)
    assert decoded.num_tokens.tolist() == [5, 5, 5, 5]


def test_quantized_vectors_are_codebook_entries(tiny_tokenizer, images):
    encoded = tiny_tokenizer.encode(images)
    torch.testing.assert_close(encoded.quantized, tiny_tokenizer.quantizer.lookup(encoded.codes))
    norms = encoded.quantized.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # l2-normalised codebook


@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False])
def test_decode_ignores_codes_after_prefix(tiny_tokenizer_config, images, causal):
    tiny_tokenizer_config.causal = causal
    model = SpectralTokenizer(tiny_tokenizer_config).eval()
    codes = model.encode(images).codes
    changed = codes.clone()
    changed[:, 6:] = (changed[:, 6:] + 17) % 256
    torch.testing.assert_close(model.decode(codes, 6).reconstruction, model.decode(changed, 6).reconstruction)
    # a given prefix of fewer columns decodes identically
    torch.testing.assert_close(model.decode(codes[:, :6]).reconstruction, model.decode(codes, 6).reconstruction,
                               atol=1e-5, rtol=1e-5)
    # and the prefix really matters: more tokens change the output
    assert not torch.allclose(model.decode(codes, 6).reconstruction, model.decode(codes, 7).reconstruction)


@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False])
def test_batched_per_sample_prefixes_equal_separate_calls(tiny_tokenizer_config, causal):
    tiny_tokenizer_config.causal = causal
    model = SpectralTokenizer(tiny_tokenizer_config).eval()
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    codes = model.encode(images).codes
    prefix = torch.tensor([1, 16, 5, 9, 2, 16])
    batched = model.decode(codes, prefix).reconstruction
    for i, k in enumerate(prefix.tolist()):
        single = model.decode(codes[i : i + 1], k).reconstruction
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decoder_spectral_tokens_are_causal(tiny_tokenizer):
    """With the causal mask, the decoder's hidden state of spectral token i ignores tokens j > i."""
    decoder = tiny_tokenizer.decoder
    tokens = torch.randn(2, 16, 8)
    hidden = {}

    def grab(name):
        def hook(module, args, output):
            hidden[name] = output

        return hook

    handle = decoder.layers[-1].register_forward_hook(grab("last"))
    decoder(tokens, torch.tensor([16, 16]))
    before = hidden["last"][:, decoder.num_patches : decoder.num_patches + 5].clone()
    perturbed = tokens.clone()
    perturbed[:, 5:] += 1.0
    decoder(perturbed, torch.tensor([16, 16]))
    after = hidden["last"][:, decoder.num_patches : decoder.num_patches + 5]
    handle.remove()
    torch.testing.assert_close(before, after)


@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False])
def test_encoder_causality(tiny_tokenizer_config, images, causal):
    """Latent i's pre-quantisation output is blind to latent tokens j > i exactly when causal=True."""
    tiny_tokenizer_config.causal = causal
    model = SpectralTokenizer(tiny_tokenizer_config).eval()
    i = 6
    before = model.encode(images).latents
    model.encoder.latent_tokens[i + 1 :] += torch.randn_like(model.encoder.latent_tokens[i + 1 :])
    after = model.encode(images).latents
    if causal:
        torch.testing.assert_close(before[:, : i + 1], after[:, : i + 1])
    else:
        assert not torch.allclose(before[:, : i + 1], after[:, : i + 1], atol=1e-4)
    assert not torch.allclose(before[:, i + 1 :], after[:, i + 1 :], atol=1e-4)


# ----------------------------------------------------------------------------------------------- training step


def test_forward_uses_nested_lowpass_targets(tiny_tokenizer, images):
    tiny_tokenizer.train()
    out = tiny_tokenizer(images, num_tokens=torch.tensor([1, 4, 13, 16]))
    omega = tiny_tokenizer.config.omega
    for i, k in enumerate([1, 4, 13, 16]):
        torch.testing.assert_close(out.target[i : i + 1], lowpass(images[i : i + 1], omega[k - 1]),
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.target[3], images[3], atol=1e-5, rtol=1e-5)  # omega_N = image size
    expected = (torch.nn.functional.mse_loss(out.reconstruction, out.target) + out.codebook_loss
                + 0.25 * out.commitment_loss)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert tiny_tokenizer.encoder.latent_tokens.grad is not None  # straight-through reaches the encoder
    assert tiny_tokenizer.encoder.patch_embed.weight.grad.abs().sum() > 0


def test_forward_random_prefix_is_per_sample_and_seeded(tiny_tokenizer):
    images = torch.rand(32, 3, 32, 32) * 2 - 1
    first = tiny_tokenizer(images, generator=torch.Generator().manual_seed(3)).num_tokens
    second = tiny_tokenizer(images, generator=torch.Generator().manual_seed(3)).num_tokens
    assert torch.equal(first, second)
    assert first.unique().numel() > 4 and first.min() >= 1 and first.max() <= 16


def test_without_spectral_supervision_target_is_full_image(tiny_tokenizer_config, images):
    tiny_tokenizer_config.spectral_supervision = False
    model = SpectralTokenizer(tiny_tokenizer_config)
    out = model(images)
    assert torch.equal(out.target, images)
    assert out.num_tokens.tolist() == [16] * 4


# ----------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_bit_identical(tiny_tokenizer, images, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["omega"] == tiny_tokenizer.config.omega
    for loader in (SpectralTokenizer, AutoModel):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, SpectralTokenizer)
        assert loaded.config.omega == tiny_tokenizer.config.omega
        with torch.no_grad():
            codes = tiny_tokenizer.encode(images).codes
            assert torch.equal(loaded.encode(images).codes, codes)
            assert torch.equal(loaded.decode(codes, 7).reconstruction, tiny_tokenizer.decode(codes, 7).reconstruction)
            assert torch.equal(loaded.decode(codes).reconstruction, tiny_tokenizer.decode(codes).reconstruction)


@pytest.mark.same_machine
def test_load_in_fresh_process(tiny_tokenizer, images, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = tiny_tokenizer.decode(tiny_tokenizer.encode(images).codes, 9).reconstruction
    script = (
        "import torch, sys\n"
        "from transformers import AutoModel\n"
        "import spectralar_hf\n"
        f"m = AutoModel.from_pretrained(r'{tmp_path / 'model'}').eval()\n"
        f"x = torch.load(r'{tmp_path / 'images.pt'}', weights_only=True)\n"
        "with torch.no_grad():\n"
        "    r = m.decode(m.encode(x).codes, 9).reconstruction\n"
        f"torch.save(r, r'{tmp_path / 'out.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "pixel_values,message",
    [
        (torch.zeros(2, 3, 16, 16), "expects 32x32"),
        (torch.zeros(2, 1, 32, 32), "1 channels but the tokenizer expects 3"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "integer dtype"),
        (torch.zeros(3, 32, 32), r"\(B, C, H, W\)"),
    ],
)
def test_encode_rejects_bad_images(tiny_tokenizer, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.encode(pixel_values)
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer(pixel_values)


def test_decode_rejects_bad_codes_and_prefixes(tiny_tokenizer):
    codes = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny_tokenizer.decode(codes + 256)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny_tokenizer.decode(codes - 1)
    with pytest.raises(ValueError, match="integer codebook indices"):
        tiny_tokenizer.decode(codes.float())
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        tiny_tokenizer.decode(codes, 0)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        tiny_tokenizer.decode(codes, 17)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        tiny_tokenizer.decode(codes[:, :4], 5)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        tiny_tokenizer.decode(codes, torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"\(B,\) integer tensor with B = 2"):
        tiny_tokenizer.decode(codes, torch.tensor([3, 4, 5]))
    with pytest.raises(ValueError, match="between 1 and 16"):
        tiny_tokenizer.decode(torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        tiny_tokenizer(torch.zeros(2, 3, 32, 32), num_tokens=20)


def test_fresh_codebook_is_uniform_in_one_over_k():
    """TiTok's codebook init (uniform in +-1/K) reaches the codebook: its module has no parameters of its own, and
    transformers skips those in _init_weights, which once left it at nn.Embedding's N(0, 1)."""
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32"))
    size = tokenizer.config.codebook_size
    weight = tokenizer.quantizer.codebook.weight.detach()
    assert weight.abs().max() <= 1.0 / size
    assert weight.std().item() == pytest.approx((1.0 / size) / 3**0.5, rel=0.1)


def test_more_tokens_than_low_pass_levels_is_an_error_with_spectral_supervision():
    """N > S: an S-pixel image has only S square low-pass targets, so nested supervision would repeat targets."""
    with pytest.raises(ValueError, match=r"num_latent_tokens = 40 exceeds image_size = 32.*spectral_supervision=False"):
        SpectralTokenizerConfig.from_preset("tiny-32", num_latent_tokens=40)
    config = SpectralTokenizerConfig.from_preset("tiny-32", num_latent_tokens=40, spectral_supervision=False)
    output = SpectralTokenizer(config).train()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert output.codes.shape == (2, 40) and torch.isfinite(output.loss)
