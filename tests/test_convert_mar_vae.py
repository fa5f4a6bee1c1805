"""conversion/convert_mar_vae.py and the kl-16 VAE preset without the official code (verify_mar_vae.py compares
against it): MAR's state-dict layout, a reference LDM KL-VAE written in this file with MAR's module names whose outputs
the converted diffusers AutoencoderKL must reproduce, MAR's parameter count, round trips and bad input."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from spectralar_hf.vae_presets import MAR_KL16_SCALING_FACTOR, VAE_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "conversion" / "convert_mar_vae.py"

# MAR's KL-16, `AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))` of LTH14/mar models/vae.py, measured by building
# the official module (random weights, CPU) and summing `p.numel()` over `parameters()`: 66,456,019 parameters in 312
# state-dict tensors (kl16.ckpt is 254 MB: these parameters in float32).
MAR_KL16_PARAMETERS = 66_456_019
MAR_KL16_TENSORS = 312
MAR_CHANNELS, MAR_CH_MULT, MAR_RESOLUTION, MAR_EMBED_DIM = 128, (1, 1, 2, 2, 4), 256, 16
# The official Encoder/Decoder constants that MAR's AutoencoderKL does not change.
NUM_RES_BLOCKS, ENCODER_ATTENTION_RESOLUTIONS, GROUPS, EPS = 2, (16,), 32, 1e-6

# A small MAR-style VAE: distinct widths per stage (a misplaced key cannot fit) and encoder attention on a middle
# stage (32 px: feature maps 32, 16, 8), which KL-16 does not have, to exercise the general mapping.
SMALL = dict(ch=32, ch_mult=(1, 2, 3), resolution=32, embed_dim=4)


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_mar_vae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------- the layout


def official_mar_layout(ch: int, ch_mult: tuple[int, ...], resolution: int, embed_dim: int,
                        in_channels: int = 3, out_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of MAR's `AutoencoderKL` state dict (models/vae.py), written out from its constructors: LDM
    `Encoder` (attention where the feature maps are 16 x 16, `double_z`), `Decoder` (no attention outside the mid
    block, `num_res_blocks + 1` blocks per stage, `up` listed fine to coarse), 1x1 `quant_conv` / `post_quant_conv`;
    residual blocks without `temb_proj` (`temb_ch` 0) and with a 1x1 `nin_shortcut` when the width changes."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, kernel):
        keys.update({f"{name}.weight": (cout, cin, kernel, kernel), f"{name}.bias": (cout,)})

    def norm(name, channels):
        keys.update({f"{name}.weight": (channels,), f"{name}.bias": (channels,)})

    def resnet(prefix, cin, cout):
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cin, cout, 3)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.nin_shortcut", cin, cout, 1)

    def attention(prefix, channels):
        norm(f"{prefix}.norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.{part}", channels, channels, 1)

    def mid(prefix, channels):
        resnet(f"{prefix}.mid.block_1", channels, channels)
        attention(f"{prefix}.mid.attn_1", channels)
        resnet(f"{prefix}.mid.block_2", channels, channels)

    levels, widths, top = len(ch_mult), [ch * m for m in ch_mult], ch * ch_mult[-1]
    conv("encoder.conv_in", in_channels, ch, 3)
    cin, size = ch, resolution
    for i in range(levels):
        for j in range(NUM_RES_BLOCKS):
            resnet(f"encoder.down.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
            if size in ENCODER_ATTENTION_RESOLUTIONS:
                attention(f"encoder.down.{i}.attn.{j}", cin)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
            size //= 2
    mid("encoder", top)
    norm("encoder.norm_out", top)
    conv("encoder.conv_out", top, 2 * embed_dim, 3)
    conv("decoder.conv_in", embed_dim, top, 3)
    mid("decoder", top)
    cin = top
    for i in reversed(range(levels)):
        for j in range(NUM_RES_BLOCKS + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", widths[0])
    conv("decoder.conv_out", widths[0], out_channels, 3)
    conv("quant_conv", 2 * embed_dim, 2 * embed_dim, 1)
    conv("post_quant_conv", embed_dim, embed_dim, 1)
    return keys


def small_config() -> dict:
    """The `AutoencoderKL` fields of SMALL over the kl-16 preset (what convert_mar_vae.py --config takes)."""
    stages = len(SMALL["ch_mult"])
    attention = [SMALL["resolution"] // 2**i in ENCODER_ATTENTION_RESOLUTIONS for i in range(stages)]
    return dict(block_out_channels=[SMALL["ch"] * m for m in SMALL["ch_mult"]], latent_channels=SMALL["embed_dim"],
                sample_size=SMALL["resolution"], up_block_types=["UpDecoderBlock2D"] * stages,
                down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention])


def small_layout() -> dict[str, tuple[int, ...]]:
    return official_mar_layout(SMALL["ch"], SMALL["ch_mult"], SMALL["resolution"], SMALL["embed_dim"])


def test_kl16_layout_has_mar_size_and_converts_with_no_missing_or_unexpected_key():
    layout = official_mar_layout(MAR_CHANNELS, MAR_CH_MULT, MAR_RESOLUTION, MAR_EMBED_DIM)
    assert len(layout) == MAR_KL16_TENSORS
    assert sum(math.prod(shape) for shape in layout.values()) == MAR_KL16_PARAMETERS
    assert layout["encoder.down.4.attn.1.q.weight"] == (512, 512, 1, 1)
    assert not [key for key in layout if ".attn." in key and not key.startswith("encoder.down.4.")]
    assert layout["decoder.up.4.block.0.conv1.weight"] == (512, 512, 3, 3)  # up.4 is the coarsest stage
    converter = load_converter()
    config = converter.vae_config()
    state = {key: torch.empty(shape, device="meta") for key, shape in layout.items()}
    converted = converter.convert_state_dict(state, config)  # raises on any missing / unexpected / misshapen key
    assert set(converted) == set(converter.expected_shapes(config))
    assert converted["encoder.down_blocks.4.attentions.1.to_q.weight"].shape == (512, 512)
    assert converted["decoder.up_blocks.0.resnets.2.conv2.weight"].shape == (512, 512, 3, 3)


def test_small_layout_converts_with_no_missing_or_unexpected_key():
    converter = load_converter()
    config = dict(VAE_PRESETS["kl-16"], **small_config())
    assert config["down_block_types"] == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"]
    state = {key: torch.zeros(shape) for key, shape in small_layout().items()}
    assert set(converter.convert_state_dict(state, config)) == set(converter.expected_shapes(config))


@pytest.mark.parametrize("official, ours", [
    ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
    ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("encoder.down.3.downsample.conv.bias", "encoder.down_blocks.3.downsamplers.0.conv.bias"),
    ("encoder.down.4.attn.0.norm.weight", "encoder.down_blocks.4.attentions.0.group_norm.weight"),
    ("encoder.down.4.attn.1.proj_out.weight", "encoder.down_blocks.4.attentions.1.to_out.0.weight"),
    ("encoder.mid.block_2.conv1.weight", "encoder.mid_block.resnets.1.conv1.weight"),
    ("decoder.mid.attn_1.k.bias", "decoder.mid_block.attentions.0.to_k.bias"),
    ("decoder.up.4.block.2.norm2.weight", "decoder.up_blocks.0.resnets.2.norm2.weight"),
    ("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.3.upsamplers.0.conv.weight"),
    ("post_quant_conv.weight", "post_quant_conv.weight"),
    ("decoder.up.5.block.0.conv1.weight", None),  # beyond the 5 stages
    ("encoder.down.0.block.0.temb_proj.weight", None),  # MAR's blocks have no timestep embedding
    ("loss.discriminator.main.0.weight", None),
])
def test_key_mapping_of_kl16(official, ours):
    mapped = load_converter().official_to_ours(official, len(MAR_CH_MULT))
    assert (mapped[0] if mapped else None) == ours


# ---------------------------------------------------------------------------------------------------- the preset


def test_kl16_preset_is_mar_kl16():
    config = VAE_PRESETS["kl-16"]
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    assert sum(p.numel() for p in model.parameters()) == MAR_KL16_PARAMETERS
    assert len(model.state_dict()) == MAR_KL16_TENSORS
    assert model.config.scaling_factor == MAR_KL16_SCALING_FACTOR == 0.2325
    assert (model.config.sample_size, model.config.latent_channels, model.config.force_upcast) == (256, 16, True)
    assert model.quant_conv is not None and model.post_quant_conv is not None
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert {(m.num_groups, m.eps) for m in norms} == {(GROUPS, EPS)}


def test_small_presets_are_unchanged():
    """fmnist-f4 is the architecture of the shipped checkpoints/far-fashion-mnist VAE; these must not drift."""
    assert {name: preset for name, preset in VAE_PRESETS.items() if name != "kl-16"} == {
        "fmnist-f4": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[32, 64, 128],
                          layers_per_block=1, latent_channels=4, norm_num_groups=32),
        "fmnist-f8": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[32, 64, 128, 128],
                          layers_per_block=1, latent_channels=8, norm_num_groups=32),
        "tiny": dict(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8],
                     layers_per_block=1, latent_channels=4, norm_num_groups=4),
    }


# ---------------------------------------------------------------------------------------------------- a reference VAE


class ResnetBlock(nn.Module):
    """LDM's residual block (MAR's names): x + conv2(silu(norm2(conv1(silu(norm1(x)))))), 1x1 `nin_shortcut`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions with 1x1-conv projections `q / k / v / proj_out`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=EPS)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).reshape(b, c, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))  # (B, HW, C)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero pad right and bottom by one, then a 3x3 stride-2 convolution without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _stage(blocks: list[nn.Module], attentions: list[nn.Module], resample: nn.Module | None,
           resample_name: str) -> nn.Module:
    stage = nn.Module()
    stage.block, stage.attn = nn.ModuleList(blocks), nn.ModuleList(attentions)
    if resample is not None:
        setattr(stage, resample_name, resample)
    return stage


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x)))


class ReferenceKLVAE(nn.Module):
    """An LDM / MAR KL-VAE with MAR's module names, so MAR's state dict loads with `strict=True`.

    `encode(x)` takes images `(B, 3, R, R)` in [-1, 1] and returns the posterior mean and std `(B, E, R/f, R/f)`
    (f = 2 ** (stages - 1), log-variance clamped to [-30, 20]); `decode(z)` returns images `(B, 3, R, R)`.
    """

    def __init__(self, ch: int, ch_mult: tuple[int, ...], resolution: int, embed_dim: int):
        super().__init__()
        widths, levels = [ch * m for m in ch_mult], len(ch_mult)
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        stages, cin, size = [], ch, resolution
        for i in range(levels):
            blocks = [ResnetBlock(cin if j == 0 else widths[i], widths[i]) for j in range(NUM_RES_BLOCKS)]
            cin = widths[i]
            attentions = [AttnBlock(cin) for _ in blocks] if size in ENCODER_ATTENTION_RESOLUTIONS else []
            stages.append(_stage(blocks, attentions, Downsample(cin) if i < levels - 1 else None, "downsample"))
            size //= 2
        self.encoder.down = nn.ModuleList(stages)
        self.encoder.mid = _mid(widths[-1])
        self.encoder.norm_out = nn.GroupNorm(GROUPS, widths[-1], eps=EPS)
        self.encoder.conv_out = nn.Conv2d(widths[-1], 2 * embed_dim, 3, padding=1)
        self.decoder.conv_in = nn.Conv2d(embed_dim, widths[-1], 3, padding=1)
        self.decoder.mid = _mid(widths[-1])
        stages, cin = {}, widths[-1]
        for i in reversed(range(levels)):
            blocks = [ResnetBlock(cin if j == 0 else widths[i], widths[i]) for j in range(NUM_RES_BLOCKS + 1)]
            cin = widths[i]
            stages[i] = _stage(blocks, [], Upsample(cin) if i > 0 else None, "upsample")
        self.decoder.up = nn.ModuleList(stages[i] for i in range(levels))  # listed fine to coarse, run reversed
        self.decoder.norm_out = nn.GroupNorm(GROUPS, widths[0], eps=EPS)
        self.decoder.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder.conv_in(x)
        for stage in self.encoder.down:
            for j, block in enumerate(stage.block):
                h = block(h)
                h = stage.attn[j](h) if len(stage.attn) else h
            h = stage.downsample(h) if hasattr(stage, "downsample") else h
        h = _run_mid(self.encoder.mid, h)
        moments = self.quant_conv(self.encoder.conv_out(F.silu(self.encoder.norm_out(h))))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.decoder.mid, self.decoder.conv_in(self.post_quant_conv(z)))
        for stage in reversed(self.decoder.up):
            for block in stage.block:
                h = block(h)
            h = stage.upsample(h) if hasattr(stage, "upsample") else h
        return self.decoder.conv_out(F.silu(self.decoder.norm_out(h)))


def official_small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in MAR's layout for SMALL: weights N(0, 1 / fan_in), norms near (1, 0), small biases."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in small_layout().items():
        if ".norm" in key:
            base = 1.0 if key.endswith("weight") else 0.0
            state[key] = base + 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("weight"):
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        else:
            state[key] = 0.02 * torch.randn(shape, generator=generator)
    return state


def convert_small(tmp_path: Path, state: dict | None = None) -> tuple[int, Path]:
    state = official_small_state() if state is None else state
    (tmp_path / "small.json").write_text(json.dumps(small_config()))
    torch.save({"model": state}, tmp_path / "small.ckpt")
    output = tmp_path / "out"
    status = load_converter().main(["--checkpoint", str(tmp_path / "small.ckpt"), "--output", str(output),
                                    "--config", str(tmp_path / "small.json")])
    return status, output


def test_reference_model_has_the_official_layout():
    reference = ReferenceKLVAE(**SMALL)
    assert {key: tuple(t.shape) for key, t in reference.state_dict().items()} == small_layout()


@torch.no_grad()
def test_converted_model_matches_the_reference_forward(tmp_path, capsys):
    state = official_small_state()
    reference = ReferenceKLVAE(**SMALL).eval()
    reference.load_state_dict(state, strict=True)
    status, output = convert_small(tmp_path, state)
    assert status == 0, capsys.readouterr().err
    assert "scaling_factor 0.2325" in capsys.readouterr().out
    ours = AutoencoderKL.from_pretrained(output).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, SMALL["resolution"], SMALL["resolution"], generator=generator) * 2 - 1
    mean, std = reference.encode(images)
    posterior = ours.encode(images).latent_dist
    assert mean.shape == (2, SMALL["embed_dim"], 8, 8)
    assert torch.allclose(posterior.mean, mean, atol=1e-5, rtol=0)
    assert torch.allclose(posterior.std, std, atol=1e-5, rtol=0)
    latents = torch.randn(mean.shape, generator=generator) / MAR_KL16_SCALING_FACTOR
    expected = reference.decode(latents)
    assert expected.shape == images.shape
    assert torch.allclose(ours.decode(latents).sample, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_converted_model_round_trips_through_save_and_load(tmp_path):
    status, output = convert_small(tmp_path)
    assert status == 0
    written = sorted(p.name for p in output.iterdir())
    assert written == ["config.json", "diffusion_pytorch_model.safetensors"]
    model = AutoencoderKL.from_pretrained(output).eval()
    assert model.config.scaling_factor == MAR_KL16_SCALING_FACTOR
    assert model.config.block_out_channels == [32, 64, 96]
    model.save_pretrained(tmp_path / "again")
    again = AutoencoderKL.from_pretrained(tmp_path / "again").eval()
    def fields(config):
        return {key: value for key, value in config.items() if key != "_name_or_path"}

    assert fields(again.config) == fields(model.config)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    images = torch.rand(1, 3, SMALL["resolution"], SMALL["resolution"]) * 2 - 1
    assert torch.equal(model(images).sample, again(images).sample)  # the posterior mode, decoded


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, named", [
    ("missing", "missing: encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("extra", "unexpected official keys: encoder.down.0.attn.0.q.weight"),
    ("shape", "quant_conv.weight -> quant_conv.weight (8, 4, 1, 1) (expected (8, 8, 1, 1))"),
    ("no model entry", "has no state dict under 'model' (its entries: epoch, state_dict)"),
])
def test_converter_names_bad_keys_in_one_line(tmp_path, capsys, change, named):
    state = official_small_state()
    if change == "missing":
        del state["encoder.down.1.block.0.nin_shortcut.weight"]
    elif change == "extra":
        state["encoder.down.0.attn.0.q.weight"] = torch.zeros(32, 32, 1, 1)
    elif change == "shape":
        state["quant_conv.weight"] = torch.zeros(8, 4, 1, 1)
    (tmp_path / "small.json").write_text(json.dumps(small_config()))
    checkpoint = {"state_dict": state, "epoch": 3} if change == "no model entry" else {"model": state}
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    status = load_converter().main(["--checkpoint", str(tmp_path / "bad.ckpt"), "--output", str(tmp_path / "out"),
                                    "--config", str(tmp_path / "small.json")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("convert_mar_vae: error:") and err.count("\n") == 1, err
    assert named in err
    assert not (tmp_path / "out").exists()


def test_converter_refuses_a_used_output_directory_and_the_wrong_config(tmp_path, capsys):
    status, output = convert_small(tmp_path)
    assert status == 0
    capsys.readouterr()
    status, _ = convert_small(tmp_path)  # the same output again, without --overwrite
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "non-empty directory" in err and "--overwrite" in err
    converter = load_converter()
    status = converter.main(["--checkpoint", str(tmp_path / "small.ckpt"), "--output", str(tmp_path / "kl16")])
    err = capsys.readouterr().err  # the default kl-16 config: many keys missing, some misshapen
    assert status == 2 and err.count("\n") == 1 and "missing" in err and "wrongly shaped" in err
    assert converter.main(["--checkpoint", str(tmp_path / "small.ckpt"), "--output", str(output),
                           "--config", str(tmp_path / "small.json"), "--overwrite"]) == 0
