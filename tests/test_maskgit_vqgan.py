"""MaskGITVQGAN and conversion/convert_maskgit_vqgan.py, without the official code (verify_maskgit_vqgan.py compares
against it): the official state-dict layout, same padding, the quantizer, soft codes, round trips and bad input."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from spectralar_hf import MaskGITVQGAN, MaskGITVQGANConfig, PixelDecoder
from spectralar_hf.models.vqgan import MaskGITVQGANQuantizer, SamePadConv2d, VQGANResnetBlock, same_padding

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).parents[1] / "conversion" / "convert_maskgit_vqgan.py"

# The state dict of the official `PretrainedTokenizer` (bytedance/1d-tokenizer modeling/modules/maskgit_vqgan.py) for
# the "tiny" preset (3 channels, hidden 32, channel_mult [1, 2], 1 ResNet block, z 16, 32 codes), written out by hand
# from the official module: bias-free conv_in / ResNet convs / nin_shortcut; nin_shortcut is out -> out channels.
OFFICIAL_TINY = {
    "encoder.conv_in.weight": (32, 3, 3, 3),
    **{f"encoder.down.0.block.0.{k}": s for k, s in [
        ("norm1.weight", (32,)), ("norm1.bias", (32,)), ("conv1.weight", (32, 32, 3, 3)),
        ("norm2.weight", (32,)), ("norm2.bias", (32,)), ("conv2.weight", (32, 32, 3, 3))]},
    **{f"encoder.down.1.block.0.{k}": s for k, s in [
        ("norm1.weight", (32,)), ("norm1.bias", (32,)), ("conv1.weight", (64, 32, 3, 3)),
        ("norm2.weight", (64,)), ("norm2.bias", (64,)), ("conv2.weight", (64, 64, 3, 3)),
        ("nin_shortcut.weight", (64, 64, 1, 1))]},
    **{f"encoder.mid.0.{k}": s for k, s in [
        ("norm1.weight", (64,)), ("norm1.bias", (64,)), ("conv1.weight", (64, 64, 3, 3)),
        ("norm2.weight", (64,)), ("norm2.bias", (64,)), ("conv2.weight", (64, 64, 3, 3))]},
    "encoder.norm_out.weight": (64,), "encoder.norm_out.bias": (64,),
    "encoder.conv_out.weight": (16, 64, 1, 1), "encoder.conv_out.bias": (16,),
    "decoder.conv_in.weight": (64, 16, 3, 3), "decoder.conv_in.bias": (64,),
    **{f"decoder.mid.0.{k}": s for k, s in [
        ("norm1.weight", (64,)), ("norm1.bias", (64,)), ("conv1.weight", (64, 64, 3, 3)),
        ("norm2.weight", (64,)), ("norm2.bias", (64,)), ("conv2.weight", (64, 64, 3, 3))]},
    **{f"decoder.up.0.block.0.{k}": s for k, s in [
        ("norm1.weight", (64,)), ("norm1.bias", (64,)), ("conv1.weight", (32, 64, 3, 3)),
        ("norm2.weight", (32,)), ("norm2.bias", (32,)), ("conv2.weight", (32, 32, 3, 3)),
        ("nin_shortcut.weight", (32, 32, 1, 1))]},
    **{f"decoder.up.1.block.0.{k}": s for k, s in [
        ("norm1.weight", (64,)), ("norm1.bias", (64,)), ("conv1.weight", (64, 64, 3, 3)),
        ("norm2.weight", (64,)), ("norm2.bias", (64,)), ("conv2.weight", (64, 64, 3, 3))]},
    "decoder.up.1.upsample_conv.weight": (64, 64, 3, 3), "decoder.up.1.upsample_conv.bias": (64,),
    "decoder.norm_out.weight": (32,), "decoder.norm_out.bias": (32,),
    "decoder.conv_out.weight": (3, 32, 3, 3), "decoder.conv_out.bias": (3,),
    "quantize.embedding.weight": (32, 16),
}


def official_layout(channels, hidden, mult, blocks, z, codebook):
    """The official key -> shape rules (Encoder / Decoder / VectorQuantizer of the official module), for any sizes."""
    keys = {}

    def resnet(prefix, cin, cout):
        keys.update({f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
                     f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.norm2.weight": (cout,),
                     f"{prefix}.norm2.bias": (cout,), f"{prefix}.conv2.weight": (cout, cout, 3, 3)})
        if cin != cout:
            keys[f"{prefix}.nin_shortcut.weight"] = (cout, cout, 1, 1)

    levels = len(mult)
    keys["encoder.conv_in.weight"] = (hidden, channels, 3, 3)
    in_mult = (1,) + tuple(mult)
    for i in range(levels):
        cin = hidden * in_mult[i]
        for b in range(blocks):
            resnet(f"encoder.down.{i}.block.{b}", cin, hidden * mult[i])
            cin = hidden * mult[i]
    top = hidden * mult[-1]
    for b in range(blocks):
        resnet(f"encoder.mid.{b}", top, top)
    keys.update({"encoder.norm_out.weight": (top,), "encoder.norm_out.bias": (top,),
                 "encoder.conv_out.weight": (z, top, 1, 1), "encoder.conv_out.bias": (z,),
                 "decoder.conv_in.weight": (top, z, 3, 3), "decoder.conv_in.bias": (top,)})
    for b in range(blocks):
        resnet(f"decoder.mid.{b}", top, top)
    for i in range(levels):
        cin = top if i == levels - 1 else hidden * mult[i + 1]
        for b in range(blocks):
            resnet(f"decoder.up.{i}.block.{b}", cin, hidden * mult[i])
            cin = hidden * mult[i]
        if i != 0:
            keys[f"decoder.up.{i}.upsample_conv.weight"] = (cin, cin, 3, 3)
            keys[f"decoder.up.{i}.upsample_conv.bias"] = (cin,)
    keys.update({"decoder.norm_out.weight": (hidden * mult[0],), "decoder.norm_out.bias": (hidden * mult[0],),
                 "decoder.conv_out.weight": (channels, hidden * mult[0], 3, 3), "decoder.conv_out.bias": (channels,),
                 "quantize.embedding.weight": (codebook, z)})
    return keys


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_maskgit_vqgan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_state_dict(layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) * 0.1 for key, shape in layout.items()}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny")).eval()


# ---------------------------------------------------------------------------------------------------- layout


def test_official_layout_rules_match_the_handwritten_tiny_list():
    assert official_layout(3, 32, [1, 2], 1, 16, 32) == OFFICIAL_TINY


@pytest.mark.parametrize("preset", ["tiny", "small", "maskgit-imagenet-f16-256"])
def test_parameter_names_and_shapes_are_the_official_ones(preset):
    config = MaskGITVQGANConfig.from_preset(preset)
    layout = official_layout(config.num_channels, config.hidden_channels, config.channel_mult,
                             config.num_res_blocks, config.z_channels, config.codebook_size)
    assert load_converter().expected_shapes(config) == layout
    if preset == "maskgit-imagenet-f16-256":
        assert len(layout) == 168
        assert layout["encoder.down.4.block.0.nin_shortcut.weight"] == (512, 512, 1, 1)
        assert layout["decoder.up.1.block.0.conv1.weight"] == (128, 256, 3, 3)


def test_converter_accepts_the_official_layout_and_loads_it(tmp_path, capsys):
    converter = load_converter()
    state = official_state_dict(OFFICIAL_TINY)
    torch.save(state, tmp_path / "official.bin")
    assert converter.main(["--checkpoint", str(tmp_path / "official.bin"), "--output", str(tmp_path / "out"),
                           "--preset", "tiny"]) == 0
    assert "32 x 16 codebook" in capsys.readouterr().out
    model = MaskGITVQGAN.from_pretrained(tmp_path / "out")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("change, named", [
    ("missing", "decoder.up.0.block.0.nin_shortcut.weight"),
    ("extra", "encoder.down.0.block.0.nin_shortcut.weight"),
    ("shape", "quantize.embedding.weight (64, 16) (expected (32, 16))"),
    ("nested", "entries epoch, state_dict are not tensors"),
])
def test_converter_names_missing_extra_and_misshapen_keys(tmp_path, capsys, change, named):
    converter = load_converter()
    state = official_state_dict(OFFICIAL_TINY)
    if change == "missing":
        del state["decoder.up.0.block.0.nin_shortcut.weight"]
    elif change == "extra":
        state["encoder.down.0.block.0.nin_shortcut.weight"] = torch.zeros(32, 32, 1, 1)
    elif change == "shape":
        state["quantize.embedding.weight"] = torch.zeros(64, 16)
    else:
        state = {"state_dict": state, "epoch": 3}
    torch.save(state, tmp_path / "bad.bin")
    status = converter.main(["--checkpoint", str(tmp_path / "bad.bin"), "--output", str(tmp_path / "out"),
                             "--preset", "tiny"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("convert_maskgit_vqgan: error:") and err.count("\n") == 1
    assert named in err
    assert not (tmp_path / "out").exists()


def test_converter_refuses_a_wrong_preset_and_a_used_output_directory(tmp_path, capsys):
    converter = load_converter()
    torch.save(official_state_dict(OFFICIAL_TINY), tmp_path / "tiny.bin")
    assert converter.main(["--checkpoint", str(tmp_path / "tiny.bin"), "--output", str(tmp_path / "a")]) == 2
    assert "missing" in capsys.readouterr().err  # the released preset has many more keys
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("x")
    assert converter.main(["--checkpoint", str(tmp_path / "tiny.bin"), "--output", str(tmp_path / "b"),
                           "--preset", "tiny"]) == 2
    assert "non-empty directory" in capsys.readouterr().err
    (tmp_path / "c.bin").write_bytes(b"not a checkpoint")
    assert converter.main(["--checkpoint", str(tmp_path / "c.bin"), "--output", str(tmp_path / "c")]) == 2
    assert "not a readable weights-only PyTorch checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (16, 3, 1, (1, 1)), (16, 1, 1, (0, 0)), (5, 3, 2, (1, 1)), (4, 3, 2, (0, 1)), (7, 4, 1, (1, 2)), (6, 3, 3, (0, 0)),
])
def test_same_padding_is_tensorflow_same(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    conv = SamePadConv2d(1, 1, kernel, stride=stride)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == math.ceil(size / stride)


def test_same_pad_conv_matches_a_symmetrically_padded_conv_for_odd_kernels():
    torch.manual_seed(0)
    conv = SamePadConv2d(4, 5, 3)
    x = torch.randn(2, 4, 6, 7)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-6)
    conv = SamePadConv2d(2, 2, 2)  # even kernel: the extra pixel of padding goes after
    x = torch.randn(1, 2, 4, 4)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias), atol=1e-6)


def test_released_sizes_downsample_256_to_16_and_back():
    config = MaskGITVQGANConfig.from_preset("maskgit-imagenet-f16-256")
    assert (config.downsample_factor, config.latent_size) == (16, 16)
    with torch.device("meta"):  # shapes only, no compute
        model = MaskGITVQGAN(config)
        latents = model.encoder(torch.empty(2, 3, 256, 256))
        assert latents.shape == (2, 256, 16, 16)
        assert model.decoder(latents).shape == (2, 3, 256, 256)
        assert model.encoder(torch.empty(1, 3, 256, 128)).shape == (1, 256, 16, 8)
    assert sum(p.numel() for p in model.parameters()) == 54_515_587


@pytest.mark.parametrize("cin, cout", [(32, 32), (32, 64)])
def test_resnet_block_formula(cin, cout):
    torch.manual_seed(0)
    block = VQGANResnetBlock(cin, cout)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.2)
    x = torch.randn(2, cin, 6, 6)
    h = F.conv2d(F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)), block.conv1.weight, padding=1)
    h = F.conv2d(F.silu(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)), block.conv2.weight, padding=1)
    # with a width change the released model adds a 1x1 projection of the branch output, not of the input
    expected = x + h if cin == cout else h + F.conv2d(h, block.nin_shortcut.weight)
    assert torch.allclose(block(x), expected, atol=1e-5)
    assert all(conv.bias is None for conv in (block.conv1, block.conv2))


def test_pixel_decoder_is_the_models_decoder_on_its_own(tiny):
    config = tiny.config
    decoder = PixelDecoder(out_channels=3, hidden_channels=32, channel_mult=[1, 2], num_res_blocks=1, z_channels=16)
    decoder.load_state_dict(tiny.decoder.state_dict())  # same names and shapes
    latents = tiny.embed_codes(torch.randint(0, config.codebook_size, (2, 8, 8)))
    assert torch.equal(decoder(latents), tiny.decode(latents, clamp=False).reconstruction)
    assert decoder.upsample_factor == 2


# ---------------------------------------------------------------------------------------------------- quantizer


def test_quantizer_picks_the_nearest_codebook_entry():
    torch.manual_seed(0)
    quantizer = MaskGITVQGANQuantizer(64, 8)
    latents = torch.randn(3, 8, 5, 4)
    with torch.no_grad():
        quantizer.embedding.weight.normal_()
        quantized, codes, _, _ = quantizer(latents)
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, 8)
    brute = torch.cdist(vectors, quantizer.embedding.weight).argmin(dim=1).view(3, 5, 4)
    assert codes.shape == (3, 5, 4) and codes.dtype == torch.int64
    assert torch.equal(codes, brute)
    assert torch.equal(quantized, quantizer.embedding.weight[codes].permute(0, 3, 1, 2))


def test_straight_through_gradient_reaches_the_encoder(tiny):
    quantizer = tiny.quantize
    latents = torch.randn(2, 16, 3, 3, requires_grad=True)
    weights = torch.randn(2, 16, 3, 3)
    quantized, _, commitment, codebook = quantizer(latents)
    (quantized * weights).sum().backward()
    assert torch.equal(latents.grad, weights)  # identity gradient through the quantization
    (commitment + codebook).backward()
    assert quantizer.embedding.weight.grad.abs().sum() > 0
    tiny.train()
    out = tiny(torch.rand(2, 3, 16, 16))
    out.reconstruction_loss.backward()
    assert tiny.encoder.conv_in.weight.grad.abs().sum() > 0
    expected = out.commitment_loss + tiny.config.commitment_cost * out.codebook_loss
    assert torch.allclose(out.quantization_loss, expected)


def test_encode_returns_exact_codebook_vectors_without_gradients(tiny):
    with torch.no_grad():
        encoded = tiny.encode(torch.rand(2, 3, 16, 16))
    assert encoded.codes.shape == (2, 8, 8) and encoded.latents.shape == (2, 16, 8, 8)
    assert torch.equal(encoded.quantized, tiny.embed_codes(encoded.codes))
    assert torch.equal(tiny.decode(encoded.quantized).reconstruction, tiny.decode_codes(encoded.codes).reconstruction)


# ---------------------------------------------------------------------------------------------------- decoding


def test_one_hot_soft_codes_decode_like_hard_codes(tiny):
    size = tiny.config.codebook_size
    codes = torch.randint(0, size, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    one_hot = F.one_hot(codes, size).float()
    with torch.no_grad():
        hard = tiny.decode_codes(codes).reconstruction
        assert torch.allclose(tiny.decode_soft_codes(one_hot).reconstruction, hard, atol=1e-6)
        assert torch.allclose(tiny.decode_soft_codes(one_hot.permute(0, 3, 1, 2), dim=1).reconstruction, hard,
                              atol=1e-6)
        probabilities = torch.randn(2, 8, 8, size).softmax(-1)
        expected = torch.einsum("bhwk,kd->bdhw", probabilities, tiny.codebook)
        assert torch.allclose(tiny.embed_soft_codes(probabilities), expected, atol=1e-6)
        assert tiny.decode_codes(codes.reshape(2, 64)).reconstruction.equal(hard)  # square (B, h*w) codes
        raw = tiny.decode_codes(codes, clamp=False).reconstruction
    assert torch.equal(hard, raw.clamp(0, 1))
    assert hard.min() >= 0 and hard.max() <= 1
    logits = torch.randn(1, size, 8, 8, requires_grad=True)  # TiTok stage 2 trains through the soft codes
    tiny.decode_soft_codes(logits.softmax(1), dim=1, clamp=False).reconstruction.square().sum().backward()
    assert logits.grad.abs().sum() > 0


def test_save_and_from_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is MaskGITVQGAN and loaded.config.channel_mult == [1, 2]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = tiny.encode(images), loaded.encode(images)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.latents, b.latents)
        assert torch.equal(tiny.decode_codes(a.codes).reconstruction, loaded.decode_codes(a.codes).reconstruction)


def test_fresh_init(tiny):
    size = tiny.config.codebook_size
    assert tiny.codebook.abs().max() <= 1.0 / size and tiny.codebook.std() > 0
    assert abs(float(tiny.decoder.conv_out.weight.detach().std()) - 0.02) < 0.005
    assert torch.equal(tiny.encoder.norm_out.weight, torch.ones(64))


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 1, 16, 16), "has 1 channels but the MaskGIT-VQGAN expects 3"),
    (torch.rand(1, 3, 15, 16), "multiples of the downsampling factor 2"),
    (torch.rand(1, 3, 16, 16) * 2 - 1, "values in [0, 1]"),
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    (torch.rand(3, 16, 16), "add the batch dimension"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "images.float() / 255"),
])
def test_bad_images(tiny, images, message):
    with pytest.raises(ValueError) as info:
        tiny.encode(images)
    assert message in str(info.value)


@pytest.mark.parametrize("codes, message", [
    (torch.full((1, 8, 8), 32), "[0, 32)"),
    (torch.full((1, 8, 8), -1), "[0, 32)"),
    (torch.zeros(1, 8, 8), "integer codebook indices"),
    (torch.zeros(1, 10, dtype=torch.long), "square grid"),
    (torch.zeros(8, dtype=torch.long), "(B, h, w)"),
])
def test_bad_codes(tiny, codes, message):
    with pytest.raises(ValueError) as info:
        tiny.decode_codes(codes)
    assert message in str(info.value)


def test_bad_soft_codes_and_latents(tiny):
    with pytest.raises(ValueError, match="32 entries"):
        tiny.decode_soft_codes(torch.rand(1, 8, 8, 31).softmax(-1))
    with pytest.raises(ValueError, match="not logits"):
        tiny.decode_soft_codes(torch.randn(1, 8, 8, 32))
    with pytest.raises(ValueError, match=r"shape \(B, 16, h, w\)"):
        tiny.decode(torch.randn(1, 8, 8, 8))


@pytest.mark.parametrize("overrides, message", [
    (dict(channel_mult=[]), "non-empty list of positive ints"),
    (dict(hidden_channels=24), "divisible by norm_num_groups 32"),
    (dict(codebook_dim=8), "must equal z_channels"),
    (dict(image_size=15), "not divisible by the downsampling factor"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_config(overrides, message):
    with pytest.raises(ValueError) as info:
        MaskGITVQGANConfig.from_preset("tiny", **overrides)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="Unknown MaskGIT-VQGAN preset"):
        MaskGITVQGANConfig.from_preset("f8")


def test_other_loaders_name_the_maskgit_class(tiny, tmp_path):
    """A MaskGIT-VQGAN folder given to another model's from_pretrained, or to a script / CLI flag, says what it is."""
    from spectralar_hf import SpectralTokenizer
    from spectralar_hf.utils import describe_folder

    tiny.save_pretrained(tmp_path / "vqgan")
    with pytest.raises(ValueError, match="load it with MaskGITVQGAN.from_pretrained"):
        SpectralTokenizer.from_pretrained(tmp_path / "vqgan")
    assert describe_folder(tmp_path / "vqgan") == "a MaskGIT-VQGAN (MaskGITVQGAN)"
