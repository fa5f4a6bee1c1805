"""conversion/convert_far.py without the official code (verify_far.py compares against it): FAR's state-dict layout
written out from the official constructors (a tiny config, and FAR-B/L/H on the meta device), the merged keys (class
embedding + fake latent, the level Linear(1, w) -> table), a reference diffusion head written in this file with the
official module names whose output the converted head must reproduce, a converted tiny pipeline's save / load round
trip, and bad input."""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn

from spectralar_hf import FARConfig, FARPipeline, FARTransformer
from spectralar_hf.models.far.modeling_far import build_noise_scheduler
from spectralar_hf.vae_presets import MAR_KL16_SCALING_FACTOR

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "conversion" / "convert_far.py"

# FAR's sizes (yuhuUSTC/FAR models/far.py far_base / far_large / far_huge; head depth x width of train.sh and
# sample.sh; 256 px on KL-16: 16 x 16 tokens of 16 values; buffer 64; MLP ratio 4; timestep frequencies 256).
OFFICIAL_SIZES = {"far_base": (768, 12, 6), "far_large": (1024, 16, 3), "far_huge": (1280, 20, 3)}
HEAD_WIDTH, BUFFER, SEQ_LEN, TOKEN_DIM, MLP_RATIO, FREQUENCIES, OFFICIAL_CLASSES = 1024, 64, 256, 16, 4, 256, 1000
# (tensors, parameters) of the official state dicts, measured by building the official modules (models/far.py with
# timm 0.9.12; diffloss_d 6 / 3 / 3) and counting `state_dict()` entries and elements
OFFICIAL_COUNTS = {"far_base": (366, 207_926_816), "far_large": (438, 426_359_840), "far_huge": (534, 811_722_272)}

# The test's stand-in for a released model: the "tiny" preset's sizes (4 x 8 x 8 latents, 10 classes) under the
# converter's --model far_tiny.
TINY_MODEL, TINY_PRESET = "far_tiny", "tiny"
TINY = FARConfig.from_preset(TINY_PRESET)
FAST = dict(num_inference_steps=2, diffusion_steps=3)


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_far", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def converter(monkeypatch):
    module = load_converter()
    monkeypatch.setitem(module.MODEL_PRESETS, TINY_MODEL, TINY_PRESET)
    return module


# ---------------------------------------------------------------------------------------------------- the layout


def official_far_layout(width: int, encoder_depth: int, decoder_depth: int, head_depth: int, head_width: int,
                        seq_len: int = SEQ_LEN, buffer: int = BUFFER, token_dim: int = TOKEN_DIM,
                        num_classes: int = OFFICIAL_CLASSES) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official `FAR` state dict, written out from its constructors: `FAR.__init__` (class_emb,
    fake_latent, mask_token, z_proj, z_proj_ln, learned positions, encoder / decoder timm `Block`s with qkv bias,
    norms, decoder_embed) and `DiffLoss` -> `SimpleMLPAdaLN` (`diffloss.net.*`: time MLP on 256 frequencies,
    cond_embed, index_cond_embed Linear(1, w), input_proj, res_blocks, final_layer with an affine-free norm)."""
    keys: dict[str, tuple[int, ...]] = {}

    def linear(name, cin, cout):
        keys.update({f"{name}.weight": (cout, cin), f"{name}.bias": (cout,)})

    def norm(name, channels):
        keys.update({f"{name}.weight": (channels,), f"{name}.bias": (channels,)})

    def block(prefix):
        norm(f"{prefix}.norm1", width)
        linear(f"{prefix}.attn.qkv", width, 3 * width)
        linear(f"{prefix}.attn.proj", width, width)
        norm(f"{prefix}.norm2", width)
        linear(f"{prefix}.mlp.fc1", width, MLP_RATIO * width)
        linear(f"{prefix}.mlp.fc2", MLP_RATIO * width, width)

    keys["class_emb.weight"] = (num_classes, width)
    keys["fake_latent"] = (1, width)
    keys["mask_token"] = (1, 1, width)
    linear("z_proj", token_dim, width)
    norm("z_proj_ln", width)
    keys["encoder_pos_embed_learned"] = (1, seq_len + buffer, width)
    for i in range(encoder_depth):
        block(f"encoder_blocks.{i}")
    norm("encoder_norm", width)
    linear("decoder_embed", width, width)
    keys["decoder_pos_embed_learned"] = (1, seq_len + buffer, width)
    for i in range(decoder_depth):
        block(f"decoder_blocks.{i}")
    norm("decoder_norm", width)
    keys["diffusion_pos_embed_learned"] = (1, seq_len, width)
    net = "diffloss.net"
    linear(f"{net}.time_embed.mlp.0", FREQUENCIES, head_width)
    linear(f"{net}.time_embed.mlp.2", head_width, head_width)
    linear(f"{net}.cond_embed", width, head_width)
    linear(f"{net}.index_cond_embed", 1, head_width)
    linear(f"{net}.input_proj", token_dim, head_width)
    for i in range(head_depth):
        norm(f"{net}.res_blocks.{i}.in_ln", head_width)
        linear(f"{net}.res_blocks.{i}.mlp.0", head_width, head_width)
        linear(f"{net}.res_blocks.{i}.mlp.2", head_width, head_width)
        linear(f"{net}.res_blocks.{i}.adaLN_modulation.1", head_width, 3 * head_width)
    linear(f"{net}.final_layer.linear", head_width, 2 * token_dim)
    linear(f"{net}.final_layer.adaLN_modulation.1", head_width, 2 * head_width)
    return keys


def tiny_layout() -> dict[str, tuple[int, ...]]:
    return official_far_layout(TINY.hidden_size, TINY.encoder_layers, TINY.decoder_layers, TINY.head_depth,
                               TINY.head_width, seq_len=TINY.num_tokens, buffer=TINY.class_buffer_size,
                               token_dim=TINY.token_dim, num_classes=TINY.num_classes)


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random non-zero tensors (std 1 / sqrt(fan_in) for matrices, 0.2 for vectors and embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        scale = 1 / math.sqrt(shape[1]) if len(shape) == 2 and key.endswith(".weight") and shape[1] > 1 else 0.2
        state[key] = scale * torch.randn(shape, generator=generator)
    return state


def released_args(model: str = TINY_MODEL, **overrides) -> argparse.Namespace:
    """The `args` entry of a checkpoint-last.pth (main_far.py arguments that shape the model)."""
    values = dict(model=model, img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, mask=False,
                  label_drop_prob=0.1, class_num=1000, buffer_size=BUFFER, diffloss_d=3, diffloss_w=HEAD_WIDTH)
    if model == TINY_MODEL:  # the tiny stand-in's sizes
        values.update(img_size=TINY.latent_size * 16, vae_embed_dim=TINY.latent_channels,
                      class_num=TINY.num_classes, buffer_size=TINY.class_buffer_size, diffloss_d=TINY.head_depth,
                      diffloss_w=TINY.head_width)
    values.update(overrides)
    return argparse.Namespace(**values)


def save_checkpoint(path: Path, ema: dict, raw: dict | None = None, args: argparse.Namespace | None = None) -> Path:
    """The layout of util/misc.py save_model."""
    torch.save({"model": ema if raw is None else raw, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 399,
                "scaler": {"scale": 65536.0}, "args": released_args() if args is None else args}, path)
    return path


@pytest.mark.parametrize("model", sorted(OFFICIAL_SIZES))
def test_far_b_l_h_layouts_convert_with_no_missing_or_unexpected_key(model):
    width, depth, head_depth = OFFICIAL_SIZES[model]
    layout = official_far_layout(width, depth, depth, head_depth, HEAD_WIDTH)
    assert (len(layout), sum(math.prod(shape) for shape in layout.values())) == OFFICIAL_COUNTS[model]
    converter = load_converter()
    state = {key: torch.empty(shape, device="meta") for key, shape in layout.items()}
    config = converter.far_config(model, state, released_args(model, diffloss_d=head_depth))
    expected = converter.expected_shapes(config)
    converted = converter.convert_state_dict(state, config)  # raises on any missing / unexpected / misshapen key
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert (config.hidden_size, config.encoder_layers, config.decoder_layers) == (width, depth, depth)
    assert (config.class_buffer_size, config.head_depth, config.head_width) == (BUFFER, head_depth, HEAD_WIDTH)
    assert config.use_mask is False and config.inference_mask_schedule == "none"
    assert converted["class_embedding.weight"].shape == (OFFICIAL_CLASSES + 1, width)
    assert converted["diffusion_head.level_embedding.weight"].shape == (config.num_levels, HEAD_WIDTH)
    assert converted["encoder_layers.0.mlp.0.weight"].shape == (MLP_RATIO * width, width)
    # the released sampling settings come with the preset
    assert config.level_schedule == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10] and config.guidance_scale == 3.0


def test_key_mapping_round_trips_through_the_inverse():
    converter = load_converter()
    for official in tiny_layout():
        ours = converter.official_to_ours(official)
        if official in {key for keys in converter.MERGED.values() for key in keys}:
            assert ours is None
            continue
        assert ours is not None, official
        assert converter.ours_to_official(ours) == [official]
    assert converter.official_to_ours("encoder_blocks.3.mlp.fc2.bias") == "encoder_layers.3.mlp.2.bias"
    assert converter.official_to_ours("diffloss.net.res_blocks.1.in_ln.weight") == "diffusion_head.blocks.1.norm.weight"
    assert converter.official_to_ours("diffloss.net.time_embed.mlp.2.weight") == \
        "diffusion_head.time_embedding.linear_2.weight"
    assert converter.official_to_ours("encoder_blocks.0.attn.q_norm.weight") is None


def test_class_embedding_and_level_table_are_exact():
    converter = load_converter()
    state = random_state(tiny_layout())
    converted = converter.convert_state_dict(state, TINY)
    classes = converted["class_embedding.weight"]
    assert torch.equal(classes[: TINY.num_classes], state["class_emb.weight"])
    assert torch.equal(classes[TINY.null_class_id], state["fake_latent"][0])  # the null class is the last row
    weight, bias = state["diffloss.net.index_cond_embed.weight"], state["diffloss.net.index_cond_embed.bias"]
    table = converted["diffusion_head.level_embedding.weight"]
    assert table.shape == (TINY.num_levels, TINY.head_width) and table.dtype == torch.float32
    for level in range(TINY.num_levels):
        assert torch.equal(table[level], (weight[:, 0].double() * level + bias.double()).float())
        official = nn.functional.linear(torch.tensor([[float(level)]]), weight, bias)[0]  # Linear(1, w)(level)
        torch.testing.assert_close(table[level], official, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- reference head


class ReferenceTimestepEmbedder(nn.Module):
    """The official TimestepEmbedder: [cos, sin] of t * exp(-ln(10^4) k / 128), k < 128, then Linear-SiLU-Linear."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = FREQUENCIES // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ReferenceResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class ReferenceFinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class ReferenceSimpleMLPAdaLN(nn.Module):
    """The official diffusion MLP (models/diffloss.py SimpleMLPAdaLN) with its module names:
    `y = time_embed(t) + cond_embed(c) + index_cond_embed(index)`, `index` the float `(N, 1)` level value."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.time_embed = ReferenceTimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.index_cond_embed = nn.Linear(1, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ReferenceResBlock(width) for _ in range(depth))
        self.final_layer = ReferenceFinalLayer(width, 2 * in_channels)

    def forward(self, x, t, c, index):
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c) + self.index_cond_embed(index)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


def test_reference_head_has_the_official_layout():
    head = ReferenceSimpleMLPAdaLN(TINY.token_dim, TINY.head_width, TINY.hidden_size, TINY.head_depth)
    layout = {f"diffloss.net.{key}": tuple(value.shape) for key, value in head.state_dict().items()}
    assert layout == {key: shape for key, shape in tiny_layout().items() if key.startswith("diffloss.net.")}


@torch.no_grad()
def test_converted_head_matches_the_reference_head():
    converter = load_converter()
    torch.manual_seed(0)
    head = ReferenceSimpleMLPAdaLN(TINY.token_dim, TINY.head_width, TINY.hidden_size, TINY.head_depth).eval()
    for parameter in head.parameters():  # non-zero everywhere (the official init zeroes AdaLN and the output)
        parameter.normal_(0.0, 0.2)
    state = random_state(tiny_layout())
    state.update({f"diffloss.net.{key}": value for key, value in head.state_dict().items()})
    model = FARTransformer(TINY).eval()
    model.load_state_dict(converter.convert_state_dict(state, TINY), strict=True)
    rows_per_level = 4
    levels = torch.arange(TINY.num_levels).repeat_interleave(rows_per_level)
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(len(levels), TINY.token_dim, generator=generator)
    timesteps = torch.randint(0, TINY.num_train_timesteps, (len(levels),), generator=generator)
    condition = torch.randn(len(levels), TINY.hidden_size, generator=generator)
    expected = head(x_t, timesteps, condition, levels.float().unsqueeze(1))
    actual = model.diffusion_head(x_t, timesteps, condition, levels)
    assert expected.abs().max() > 0.5  # not trivially zero
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    other_level = model.diffusion_head(x_t, timesteps, condition, (levels + 1) % TINY.num_levels)
    assert (other_level - expected).abs().max() > 1e-2  # the level matters


# ---------------------------------------------------------------------------------------------------- the script


def tiny_vae(latent_channels: int = TINY.latent_channels, scaling_factor: float = MAR_KL16_SCALING_FACTOR
             ) -> AutoencoderKL:
    """32 px RGB -> 8 x 8 latents (downsampling 4), like KL-16's 256 px -> 16 x 16."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, sample_size=TINY.latent_size * 4,
                         block_out_channels=[8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 3,
                         up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, scaling_factor=scaling_factor).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "kl"
    tiny_vae().save_pretrained(path)
    return path


def test_converted_pipeline_round_trips_and_generates_the_same_images(converter, vae_dir, tmp_path, capsys):
    ema, raw = random_state(tiny_layout(), seed=0), random_state(tiny_layout(), seed=1)
    checkpoint = save_checkpoint(tmp_path / "checkpoint-last.pth", ema, raw)
    output = tmp_path / "far"
    assert converter.main(["--checkpoint", str(checkpoint), "--model", TINY_MODEL, "--vae", str(vae_dir),
                           "--output", str(output)]) == 0
    assert "FARPipeline" in capsys.readouterr().out
    pipe = FARPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    assert not pipe.transformer.training
    assert (config.use_mask, config.inference_mask_schedule, config.class_dropout_prob) == (False, "none", 0.1)
    # the EMA weights, converted
    in_memory = FARTransformer(config).eval()
    in_memory.load_state_dict(converter.convert_state_dict(ema, config), strict=True)
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[name], tensor), name
    reference = FARPipeline(vae=tiny_vae(), transformer=in_memory, scheduler=build_noise_scheduler(config))
    reference.set_progress_bar_config(disable=True)
    labels = [3, 7]
    loaded = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np", **FAST).images
    built = reference(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np",
                      **FAST).images
    assert loaded.shape == (2, 32, 32, 3)
    assert (loaded == built).all()


def test_transformer_only_raw_weights_flat_files_and_the_mask_flag(converter, tmp_path, capsys):
    ema, raw = random_state(tiny_layout(), seed=0), random_state(tiny_layout(), seed=1)
    checkpoint = save_checkpoint(tmp_path / "checkpoint.pth", ema, raw, released_args(mask=True, loss_weight=True))
    base = ["--model", TINY_MODEL]
    assert converter.main(["--checkpoint", str(checkpoint), *base, "--output", str(tmp_path / "raw"),
                           "--no-ema"]) == 0
    model = FARTransformer.from_pretrained(tmp_path / "raw")
    assert torch.equal(model.token_embedding.weight, raw["z_proj.weight"])
    assert model.config.use_mask and model.config.inference_mask_schedule == "cosine"  # args.mask
    assert model.config.loss_weighting  # args.loss_weight
    assert converter.main(["--checkpoint", str(checkpoint), *base, "--output", str(tmp_path / "ema"),
                           "--no-mask"]) == 0
    model = FARTransformer.from_pretrained(tmp_path / "ema")
    assert torch.equal(model.token_embedding.weight, ema["z_proj.weight"])
    assert not model.config.use_mask and model.config.inference_mask_schedule == "none"
    released = save_checkpoint(tmp_path / "released.pth", ema, args=released_args(loss_weight=False))
    assert converter.main(["--checkpoint", str(released), *base, "--output", str(tmp_path / "released")]) == 0
    assert not FARTransformer.from_pretrained(tmp_path / "released").config.loss_weighting  # train.sh: no FTL
    from safetensors.torch import save_file

    save_file(ema, tmp_path / "flat.safetensors")
    torch.save(ema, tmp_path / "flat.pth")
    for name in ("flat.safetensors", "flat.pth"):
        assert converter.main(["--checkpoint", str(tmp_path / name), *base, "--output", str(tmp_path / name[:-4])]) == 0
        model = FARTransformer.from_pretrained(tmp_path / name[:-4])
        assert torch.equal(model.token_embedding.weight, ema["z_proj.weight"]) and not model.config.use_mask
    assert "a flat state dict" in capsys.readouterr().out


def _drop(state, key):
    del state[key]


def _shrink(state, key):
    state[key] = state[key][:-1]


@pytest.mark.parametrize(("change", "named"), [
    (lambda state: _drop(state, "decoder_blocks.0.mlp.fc1.bias"), "1 missing: decoder_blocks.0.mlp.fc1.bias"),
    (lambda state: _drop(state, "fake_latent"), "1 missing: fake_latent"),
    (lambda state: state.update(extra=torch.zeros(2)), "1 unexpected official keys: extra"),
    (lambda state: state.update({"encoder_blocks.9.norm1.weight": torch.ones(TINY.hidden_size)}),
     "unexpected official keys: encoder_blocks.9.norm1.weight"),
    (lambda state: _shrink(state, "z_proj_ln.weight"), "wrongly shaped: z_proj_ln.weight -> encoder_input_norm.weight"),
    (lambda state: _shrink(state, "diffloss.net.index_cond_embed.bias"),
     "wrongly shaped: diffloss.net.index_cond_embed.bias"),
    (lambda state: state.update({"mask_token": torch.zeros(1, 1, TINY.hidden_size, dtype=torch.long)}),
     "not floating point: mask_token"),
])
def test_converter_names_bad_keys_in_one_line(converter, tmp_path, capsys, change, named):
    state = random_state(tiny_layout())
    change(state)
    checkpoint = save_checkpoint(tmp_path / "bad.pth", state)
    assert converter.main(["--checkpoint", str(checkpoint), "--model", TINY_MODEL, "--output",
                           str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("convert_far: error:") and "\n" not in error and named in error, error
    assert not (tmp_path / "out").exists()


def test_converter_refuses_bad_files_vaes_arguments_and_used_folders(converter, vae_dir, tmp_path, capsys):
    state = random_state(tiny_layout())
    good = save_checkpoint(tmp_path / "good.pth", state)
    torch.save({"optimizer": {}, "epoch": 3, "args": released_args()}, tmp_path / "no_model.pth")
    save_checkpoint(tmp_path / "other_model.pth", state, args=released_args(model="far_large"))
    wrong_vae = tmp_path / "vae4"
    tiny_vae(latent_channels=2).save_pretrained(wrong_vae)
    other_scale = tmp_path / "vae_scale"
    tiny_vae(scaling_factor=0.18215).save_pretrained(other_scale)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    cases = [
        (["--checkpoint", str(tmp_path / "no_model.pth")], "has no state dict under 'model_ema' or 'model'"),
        (["--checkpoint", str(tmp_path / "no_model.pth"), "--no-ema"], "has no state dict under 'model'"),
        (["--checkpoint", str(tmp_path / "missing.pth")], "is not a file"),
        (["--checkpoint", str(tmp_path / "other_model.pth")], "args.model = 'far_large' (expected 'far_tiny')"),
        (["--checkpoint", str(good), "--vae", str(wrong_vae)], "2 latent channels (FAR: 4)"),
        (["--checkpoint", str(good), "--vae", str(other_scale)], "scaling_factor 0.18215"),
        (["--checkpoint", str(good), "--vae", str(tmp_path)], "not a diffusers AutoencoderKL folder"),
        (["--checkpoint", str(good), "--output", str(used)], "non-empty directory"),
    ]
    for arguments, named in cases:
        if "--output" not in arguments:
            arguments = [*arguments, "--output", str(tmp_path / "out")]
        assert converter.main([*arguments, "--model", TINY_MODEL]) == 2, arguments
        error = capsys.readouterr().err.strip()
        assert error.startswith("convert_far: error:") and "\n" not in error and named in error, error
    assert not (tmp_path / "out").exists() and sorted(p.name for p in used.iterdir()) == ["keep.txt"]
    # --overwrite reuses the folder
    assert converter.main(["--checkpoint", str(good), "--model", TINY_MODEL, "--output", str(used),
                           "--overwrite"]) == 0
    assert (used / "config.json").is_file()


def test_verify_script_refuses_a_checkout_without_the_official_files(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("verify_far", ROOT / "conversion" / "verify_far.py")
    verify = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, verify)  # its dataclass looks its module up
    spec.loader.exec_module(verify)
    assert verify.main(["--official-repo", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("verify_far: error:") and "models/far.py" in error and "\n" not in error
