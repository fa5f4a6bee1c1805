"""SpectralTokenizer's TiTok options: the optional MaskGIT-VQGAN pixel decoder (TiTok's stage 2), the class token, the
legacy latent projection and the RGB output convolution; and that the default layout did not change (the shipped
checkpoint encodes and decodes as before these options existed, up to float32 rounding)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from conftest import assert_rounding_close

from spectralar_hf import MaskGITVQGAN, SpectralTokenizer, SpectralTokenizerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# The demo's former tokenizer (a linear patch head, no pixel decoder; shipped until the two-stage demo replaced it)
LINEAR_HEAD_TOKENIZER = ROOT / "tests" / "data" / "fmnist_tokenizer_linear_head"
# Written by the tokenizer code of commit 0daf13b (before the TiTok options): a pinned random input, its codes,
# latents, decodes (full, prefix 5, per-sample prefixes), a forward step, and the state-dict keys and shapes.
REFERENCE = Path(__file__).resolve().parent / "data" / "fmnist_tokenizer_reference.safetensors"

# A VQGAN decoder small enough for tests: 3 levels = upsampling x4 = the tiny tokenizer's patch size below.
TINY_PIXEL_DECODER = dict(hidden_channels=16, channel_mult=[1, 2, 2], num_res_blocks=1, z_channels=8,
                          codebook_size=32, norm_num_groups=8)


def pixel_config(**overrides) -> SpectralTokenizerConfig:
    values = dict(patch_size=4, pixel_decoder=dict(TINY_PIXEL_DECODER))
    values.update(overrides)
    return SpectralTokenizerConfig.from_preset("tiny-32", **values)


def make(config: SpectralTokenizerConfig, seed: int = 0) -> SpectralTokenizer:
    torch.manual_seed(seed)
    return SpectralTokenizer(config).eval()


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_codes(config, batch: int = 3, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.codebook_size, (batch, config.num_latent_tokens), generator=generator)


def vqgan_with_weights_of(tokenizer: SpectralTokenizer) -> MaskGITVQGAN:
    """A MaskGIT-VQGAN whose decoder and codebook are the tokenizer's pixel decoder and proxy codebook."""
    vqgan = MaskGITVQGAN(tokenizer.config.pixel_decoder_config).eval()
    vqgan.decoder.load_state_dict(tokenizer.pixel_decoder.state_dict())
    vqgan.quantize.embedding.load_state_dict(tokenizer.pixel_quantize.embedding.state_dict())
    return vqgan


# ------------------------------------------------------------------------- default layout is unchanged


def test_linear_head_checkpoint_computes_what_it_did_before_the_titok_options():
    reference = load_file(REFERENCE)
    with safe_open(REFERENCE, "pt") as handle:
        reference_keys = [tuple(item) for item in json.loads(handle.metadata()["state_dict"])]
    tokenizer = SpectralTokenizer.from_pretrained(LINEAR_HEAD_TOKENIZER).eval()
    config = tokenizer.config
    assert (config.class_token, config.legacy_latent_projection, config.decoder_output_conv,
            config.pixel_decoder) == (False, False, False, None)
    assert sorted((k, list(v.shape)) for k, v in tokenizer.state_dict().items()) == reference_keys
    pixels, codes = reference["pixel_values"], reference["codes"]
    with torch.no_grad():
        encoded = tokenizer.encode(pixels)
        distances = torch.cdist(encoded.latents.flatten(0, 1), tokenizer.quantizer.normalized_codebook())
        decoded = tokenizer.decode(codes)
        step = tokenizer(pixels, num_tokens=torch.tensor([3, 24, 9, 16]))
        floats = {  # decodes of the recorded codes, so that they do not hinge on a close call below
            "latents": encoded.latents, "full": decoded.reconstruction,
            "prefix5": tokenizer.decode(codes, num_tokens=5).reconstruction,
            "per_sample": tokenizer.decode(codes, num_tokens=torch.tensor([1, 7, 24, 13])).reconstruction,
        }
    assert decoded.proxy_logits is None and step.proxy_logits is None
    # Codes: exact wherever the nearest code beats the runner-up by more than rounding can move a distance (latents
    # move by ~1e-5 of their scale on another CPU, see below); a closer call may go either way, between those two.
    nearest_two = distances.topk(2, dim=-1, largest=False)
    gap = nearest_two.values[:, 1] - nearest_two.values[:, 0]
    clear = gap > 2e-4  # rounding moves these distances by < 2e-5 (latents by < 3.1e-6 under --perturb-floats)
    assert clear.float().mean() > 0.8  # the check below is meaningful: most codes are clear calls
    got, recorded = encoded.codes.flatten(), codes.flatten()
    assert torch.equal(got[clear], recorded[clear])
    assert (nearest_two.indices[~clear] == recorded[~clear, None]).any(-1).all()
    # Floats recorded on one CPU: another rounds them differently (conftest.assert_rounding_close; under
    # --perturb-floats they move by at most 1.2e-6 of max|x|).
    for name, value in floats.items():
        assert_rounding_close(value, reference[name]), name
    if torch.equal(got, recorded):  # the training step re-encodes: comparable only when the close calls agree
        assert_rounding_close(step.reconstruction, reference["forward_reconstruction"])
        assert_rounding_close(step.loss.reshape(1), reference["forward_loss"])


def test_default_config_json_gains_only_the_documented_switches(tmp_path):
    config = SpectralTokenizerConfig.from_preset("tiny-32")
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert {k: stored[k] for k in ("class_token", "legacy_latent_projection", "decoder_output_conv",
                                   "pixel_decoder")} == dict(class_token=False, legacy_latent_projection=False,
                                                             decoder_output_conv=False, pixel_decoder=None)
    old = {k: v for k, v in stored.items() if k not in ("class_token", "legacy_latent_projection",
                                                        "decoder_output_conv", "pixel_decoder")}
    (tmp_path / "config.json").write_text(json.dumps(old))  # a config.json written before the options existed
    assert SpectralTokenizerConfig.from_pretrained(tmp_path).pixel_decoder is None


# ------------------------------------------------------------------------- pixel decoder


def test_pixel_decoder_config_is_filled_in_and_matches_the_vqgan_config():
    config = pixel_config()
    assert config.pixel_decoder == dict(TINY_PIXEL_DECODER, codebook_dim=8, dropout=0.0, norm_eps=1e-6)
    vqgan = config.pixel_decoder_config
    assert (vqgan.image_size, vqgan.num_channels, vqgan.downsample_factor) == (32, 3, 4)
    # `{}` is the released MaskGIT-VQGAN decoder (TiTok's): 5 levels, 1024 x 256 codebook, upsampling 16
    titok = SpectralTokenizerConfig.from_preset("titok-b64", pixel_decoder={})
    assert titok.pixel_decoder == dict(hidden_channels=128, channel_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                                       z_channels=256, codebook_size=1024, codebook_dim=256, dropout=0.0,
                                       norm_num_groups=32, norm_eps=1e-6)


def test_pixel_decoder_parameters_have_titok_names_and_load_from_a_vqgan_by_prefix():
    tokenizer = make(pixel_config())
    keys = set(tokenizer.state_dict())
    assert not any(k.startswith("decoder.head") for k in keys)
    assert {"decoder.ffn.0.weight", "decoder.ffn.2.weight", "pixel_quantize.embedding.weight"} <= keys
    assert tokenizer.decoder.ffn[0].weight.shape == (2 * 64, 64)  # TiTok: width -> 2 width, Tanh, -> K
    assert isinstance(tokenizer.decoder.ffn[1], torch.nn.Tanh)
    assert tokenizer.decoder.ffn[2].weight.shape == (32, 2 * 64)
    torch.manual_seed(5)
    vqgan = MaskGITVQGAN(tokenizer.config.pixel_decoder_config)
    renamed = {("pixel_" + k): v for k, v in vqgan.state_dict().items() if k.startswith("decoder.")}
    renamed["pixel_quantize.embedding.weight"] = vqgan.state_dict()["quantize.embedding.weight"]
    missing, unexpected = tokenizer.load_state_dict(renamed, strict=False)
    assert not unexpected and not any(k.startswith("pixel_") for k in missing)
    assert torch.equal(tokenizer.pixel_quantize.embedding.weight, vqgan.quantize.embedding.weight)


@pytest.mark.parametrize("class_token", [False, True])
def test_pixel_decoder_shapes_for_full_and_per_sample_prefixes(class_token):
    config = pixel_config(class_token=class_token)
    tokenizer = make(config)
    codes = random_codes(config)
    with torch.no_grad():
        full = tokenizer.decode(codes)
        prefix = tokenizer.decode(codes, num_tokens=4)
        per_sample = tokenizer.decode(codes, num_tokens=torch.tensor([1, 16, 7]))
        short = tokenizer.decode(codes[:, :5])
    for output in (full, prefix, per_sample, short):
        assert output.reconstruction.shape == (3, 3, 32, 32)
        assert output.proxy_logits.shape == (3, 32, 8, 8)
        assert torch.isfinite(output.reconstruction).all()
    assert per_sample.num_tokens.tolist() == [1, 16, 7]
    # per-sample prefixes in one batch = each sample decoded alone with its own prefix
    with torch.no_grad():
        alone = tokenizer.decode(codes[2:3], num_tokens=7)
    torch.testing.assert_close(per_sample.reconstruction[2:3], alone.reconstruction, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(per_sample.proxy_logits[2:3], alone.proxy_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full.reconstruction, prefix.reconstruction, atol=1e-3)


@pytest.mark.parametrize("class_token", [False, True])
def test_pixel_decoder_keeps_the_spectral_causal_mask(class_token):
    config = pixel_config(class_token=class_token)
    tokenizer = make(config)
    codes = random_codes(config)
    later = codes.clone()
    later[:, 6:] = (later[:, 6:] + 1) % config.codebook_size  # change every token after position 6
    earlier = codes.clone()
    earlier[:, 2] = (earlier[:, 2] + 1) % config.codebook_size
    prefixes = torch.tensor([6, 3, 5])
    with torch.no_grad():
        base = tokenizer.decode(codes, num_tokens=prefixes)
        changed_later = tokenizer.decode(later, num_tokens=prefixes)
        changed_earlier = tokenizer.decode(earlier, num_tokens=prefixes)
    assert torch.equal(base.reconstruction, changed_later.reconstruction)
    assert torch.equal(base.proxy_logits, changed_later.proxy_logits)
    assert not torch.allclose(base.reconstruction, changed_earlier.reconstruction, atol=1e-4)
    # the encoder too: changing a later latent token's embedding leaves earlier latents unchanged
    pixels = images()
    with torch.no_grad():
        before = tokenizer.encode(pixels).latents
        tokenizer.encoder.latent_tokens[10].add_(torch.randn(64))  # not a constant: norm_pre would remove it
        after = tokenizer.encode(pixels).latents
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_one_hot_proxy_distribution_is_the_vqgan_decode_of_those_codes():
    tokenizer = make(pixel_config())
    vqgan = vqgan_with_weights_of(tokenizer)
    grid = torch.randint(0, 32, (2, 8, 8), generator=torch.Generator().manual_seed(3))
    one_hot = F.one_hot(grid, 32).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ours = tokenizer.pixel_decode(one_hot)
        theirs = vqgan.decode_codes(grid, clamp=False).reconstruction
    # the VQGAN's [0, 1] mapped to the tokenizer's [-1, 1]; a one-hot matmul is exact in IEEE arithmetic, but the
    # suite promises only rounding (see --perturb-floats)
    assert_rounding_close(ours, theirs * 2 - 1)
    # through decode(): a proxy head whose logits are a sharp one-hot on code 7 everywhere
    with torch.no_grad():
        tokenizer.decoder.ffn[2].weight.zero_()
        tokenizer.decoder.ffn[2].bias.copy_(F.one_hot(torch.tensor(7), 32).float() * 1e4)
        decoded = tokenizer.decode(random_codes(tokenizer.config, batch=2), num_tokens=torch.tensor([2, 9]))
        expected = vqgan.decode_codes(torch.full((2, 8, 8), 7), clamp=False).reconstruction * 2 - 1
    assert torch.equal(decoded.proxy_logits.argmax(1), torch.full((2, 8, 8), 7))
    assert_rounding_close(decoded.reconstruction, expected)


def test_soft_proxy_distribution_is_softmax_times_codebook_into_the_decoder():
    tokenizer = make(pixel_config())
    vqgan = vqgan_with_weights_of(tokenizer)
    codes = random_codes(tokenizer.config, batch=2)
    with torch.no_grad():
        decoded = tokenizer.decode(codes, num_tokens=torch.tensor([4, 16]))
        # TiTok.decode: einsum('nchw,cd->ndhw', softmax(logits, dim=1), codebook) -> pixel decoder
        latents = torch.einsum("nchw,cd->ndhw", decoded.proxy_logits.softmax(1), vqgan.codebook)
        expected = vqgan.decode(latents, clamp=False).reconstruction * 2 - 1
    torch.testing.assert_close(decoded.reconstruction, expected, atol=1e-4, rtol=1e-4)


def test_pixel_decoder_trains_end_to_end_and_exposes_proxy_logits():
    tokenizer = make(pixel_config()).train()
    step = tokenizer(images(), generator=torch.Generator().manual_seed(0))
    assert step.proxy_logits.shape == (3, 32, 8, 8) and step.reconstruction.shape == (3, 3, 32, 32)
    stage1 = F.cross_entropy(step.proxy_logits, torch.randint(0, 32, (3, 8, 8)))  # TiTok stage 1's objective
    (step.loss + stage1).backward()
    for name in ("decoder.ffn.2.weight", "pixel_decoder.conv_in.weight", "pixel_quantize.embedding.weight",
                 "encoder.patch_embed.weight"):
        grad = tokenizer.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_stage1_forward_without_pixels_gives_the_same_logits_and_vq_loss():
    tokenizer = make(pixel_config()).train()
    prefix = torch.tensor([1, 5, 16])
    full = tokenizer(images(), num_tokens=prefix)
    skipped = tokenizer(images(), num_tokens=prefix, decode_pixels=False)
    torch.testing.assert_close(skipped.proxy_logits, full.proxy_logits, rtol=0, atol=0)
    torch.testing.assert_close(skipped.target, full.target, rtol=0, atol=0)
    assert skipped.reconstruction is None and skipped.reconstruction_loss is None
    vq = full.codebook_loss + tokenizer.config.commitment_cost * full.commitment_loss
    torch.testing.assert_close(skipped.loss, vq)
    torch.testing.assert_close(full.loss, full.reconstruction_loss + vq)
    F.cross_entropy(skipped.proxy_logits, torch.randint(0, 32, (3, 8, 8))).backward()
    assert tokenizer.pixel_decoder.conv_in.weight.grad is None  # the pixel decoder never ran
    assert tokenizer.decoder.ffn[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="decode_pixels=False skips the pixel decoder, but this tokenizer has none"):
        make(SpectralTokenizerConfig.from_preset("tiny-32"))(images(), decode_pixels=False)


def test_titok_like_config_save_and_from_pretrained_round_trip(tmp_path):
    config = pixel_config(class_token=True, causal=False, spectral_supervision=False, legacy_latent_projection=True,
                          layer_norm_eps=1e-5)
    tokenizer = make(config)
    tokenizer.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["pixel_decoder"] == config.pixel_decoder and stored["class_token"] is True
    loaded = SpectralTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.config.pixel_decoder == config.pixel_decoder
    original, restored = tokenizer.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    pixels = images()
    with torch.no_grad():
        a, b = tokenizer.encode(pixels), loaded.encode(pixels)
        assert torch.equal(a.codes, b.codes)
        da, db = tokenizer.decode(a.codes), loaded.decode(b.codes)
    assert torch.equal(da.reconstruction, db.reconstruction) and torch.equal(da.proxy_logits, db.proxy_logits)


# ------------------------------------------------------------------------- the other TiTok options


def test_class_token_layout_and_mask():
    config = pixel_config(class_token=True)
    tokenizer = make(config)
    for part in (tokenizer.encoder, tokenizer.decoder):
        assert part.class_embedding.shape == (64,)
        assert part.position_embedding.shape == (config.num_patches + 1, 64)  # row 0: the class token (TiTok)
    encoder_mask = tokenizer.encoder.attention_mask(torch.device("cpu"))
    image_side = config.num_patches + 1
    assert not encoder_mask[:image_side, image_side:].any()  # class token and patches never see latents
    assert encoder_mask[image_side:, :image_side].all()
    decoder_mask = tokenizer.decoder.attention_mask(torch.tensor([3]), 5)[0, 0]
    assert not decoder_mask[image_side:, :image_side].any()  # spectral tokens see neither class nor mask tokens
    assert decoder_mask[0, image_side:image_side + 3].all() and not decoder_mask[0, image_side + 3:].any()
    # the class token changes the output (it is used), and its own output is dropped (the shapes are the patches')
    codes = random_codes(config, batch=1)
    with torch.no_grad():
        before = tokenizer.decode(codes).proxy_logits
        tokenizer.decoder.class_embedding.add_(torch.randn(64))
        after = tokenizer.decode(codes).proxy_logits
    assert before.shape == (1, 32, 8, 8) and not torch.allclose(before, after)


def test_legacy_latent_projection_is_titoks_reshape_then_1x1_conv():
    config = SpectralTokenizerConfig.from_preset("tiny-32", causal=False, legacy_latent_projection=True)
    tokenizer = make(config)
    captured = {}
    tokenizer.encoder.norm_post.register_forward_hook(lambda module, args, out: captured.update(h=out))
    with torch.no_grad():
        latents = tokenizer.encode(images()).latents
        hidden = captured["h"]  # (B, N, width) after ln_post
        batch, length, width = hidden.shape
        proj = tokenizer.encoder.proj
        # TiTokEncoder (is_legacy): reshape(B, width, N, 1) -> Conv2d 1x1 -> reshape(B, token_size, 1, N)
        conv = F.conv2d(hidden.reshape(batch, width, length, 1), proj.weight[:, :, None, None], proj.bias)
        expected = conv.reshape(batch, config.token_dim, 1, length)[:, :, 0].transpose(1, 2)
        plain = proj(hidden)
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(latents, plain, atol=1e-3)  # a transposition would have been the plain projection


def test_decoder_output_conv_is_titoks_rgb_head():
    config = SpectralTokenizerConfig.from_preset("tiny-32", decoder_output_conv=True)
    tokenizer = make(config)
    conv = tokenizer.decoder.conv_out
    assert (conv.weight.shape, conv.padding) == ((3, 3, 3, 3), (1, 1))
    plain = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval()
    missing, unexpected = plain.load_state_dict(tokenizer.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"decoder.conv_out.weight", "decoder.conv_out.bias"}
    codes = random_codes(config)
    with torch.no_grad():
        image = plain.decode(codes).reconstruction
        torch.testing.assert_close(tokenizer.decode(codes).reconstruction, conv(image))
        conv.weight.zero_()
        conv.weight[torch.arange(3), torch.arange(3), 1, 1] = 1.0
        conv.bias.zero_()  # the identity kernel: the head without the convolution
        assert_rounding_close(tokenizer.decode(codes).reconstruction, image)
    # the unpatchify order is TiTok's Rearrange('b (p1 p2 c) h w -> b c (h p1) (w p2)')
    patches = torch.randn(2, 16, 8 * 8 * 3)
    grid = patches.transpose(1, 2).reshape(2, 8, 8, 3, 4, 4)  # (b, p1, p2, c, h, w)
    expected = grid.permute(0, 3, 4, 1, 5, 2).reshape(2, 3, 32, 32)
    assert torch.equal(tokenizer.decoder.unpatchify(patches), expected)


def test_last_layer_weight_is_the_layer_that_outputs_pixels():
    assert make(pixel_config()).last_layer_weight().shape == (3, 16, 3, 3)  # pixel_decoder.conv_out
    with_conv = make(SpectralTokenizerConfig.from_preset("tiny-32", decoder_output_conv=True))
    assert with_conv.last_layer_weight() is with_conv.decoder.conv_out.weight
    plain = make(SpectralTokenizerConfig.from_preset("tiny-32"))
    assert plain.last_layer_weight() is plain.decoder.head.weight


# ------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("overrides, message", [
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, channel_mult=[1, 2])), "upsamples by 2"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, levels=3)), "unknown keys ['levels']"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, image_size=32)), "tokenizer's own image_size"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, norm_num_groups=5)), "pixel_decoder: The level widths"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, codebook_dim=4)), "pixel_decoder: codebook_dim (4) must equal"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER, codebook_size=1)), "pixel_decoder: codebook_size must be >= 2"),
    (dict(pixel_decoder=dict(TINY_PIXEL_DECODER), decoder_output_conv=True), "set only one of them"),
    (dict(legacy_latent_projection=True), "set causal=False"),
])
def test_bad_titok_options_are_clear_errors(overrides, message):
    with pytest.raises(ValueError) as error:
        pixel_config(**overrides)
    assert message in str(error.value)


def test_bad_titok_option_types_are_clear_errors():
    with pytest.raises(TypeError, match="pixel_decoder: .*hidden_channels"):
        pixel_config(pixel_decoder=dict(TINY_PIXEL_DECODER, hidden_channels="16"))
    with pytest.raises(TypeError, match="pixel_decoder must be dict or None"):
        pixel_config(pixel_decoder="maskgit")
    with pytest.raises(TypeError, match="class_token must be bool"):
        pixel_config(class_token=1)


def test_pixel_decode_input_checks():
    with pytest.raises(ValueError, match="has no pixel decoder"):
        make(SpectralTokenizerConfig.from_preset("tiny-32")).pixel_decode(torch.zeros(1, 32, 8, 8))
    tokenizer = make(pixel_config())
    with pytest.raises(ValueError, match=r"shape \(B, 32, 8, 8\)"):
        tokenizer.pixel_decode(torch.zeros(1, 8, 8, 32))
    with pytest.raises(ValueError, match="float tensor"):
        tokenizer.pixel_decode(torch.zeros(1, 32, 8, 8, dtype=torch.long))
