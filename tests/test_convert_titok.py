"""conversion/convert_titok.py without the official code (verify_titok.py compares against it): the official TiTok
state-dict layout, a reference TiTok written in this file from the official module structure (nn.MultiheadAttention
blocks, 1x1 convolutions, [0, 1] images) whose outputs the converted SpectralTokenizer must reproduce, and bad input."""

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from spectralar_hf import MaskGITVQGAN, MaskGITVQGANConfig, PixelDecoder, SpectralTokenizer, SpectralTokenizerConfig

from test_maskgit_vqgan import official_layout as vqgan_official_layout

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).parents[1] / "conversion" / "convert_titok.py"
PIXEL = dict(hidden_channels=32, channel_mult=[1, 1, 2], num_res_blocks=1, z_channels=16, codebook_size=32)
# A tiny TiTok: different encoder / decoder widths and head counts so that a swapped key cannot fit.
TINY = dict(image=32, patch=4, enc=(32, 2, 2), dec=(48, 2, 3), tokens=6, token_size=4, codebook=16)


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_titok", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(legacy: bool) -> SpectralTokenizerConfig:
    (enc_w, enc_l, enc_h), (dec_w, dec_l, dec_h) = TINY["enc"], TINY["dec"]
    return SpectralTokenizerConfig(
        image_size=TINY["image"], num_channels=3, patch_size=TINY["patch"], encoder_hidden_size=enc_w,
        encoder_num_hidden_layers=enc_l, encoder_num_attention_heads=enc_h, decoder_hidden_size=dec_w,
        decoder_num_hidden_layers=dec_l, decoder_num_attention_heads=dec_h, num_latent_tokens=TINY["tokens"],
        codebook_size=TINY["codebook"], token_dim=TINY["token_size"], l2_normalize_codebook=legacy,
        spectral_supervision=False, causal=False, layer_norm_eps=1e-5, class_token=True,
        legacy_latent_projection=legacy, decoder_output_conv=not legacy, pixel_decoder=dict(PIXEL) if legacy else None,
    )


# ---------------------------------------------------------------------------------------------------- the layout


def official_titok_layout(image, patch, enc, dec, tokens, token_size, codebook, legacy, proxy_codes=1024,
                          pixel=None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official `TiTok` state dict (modeling/titok.py, modules/blocks.py), written out from its
    constructors: `latent_tokens` at the top, `nn.MultiheadAttention` blocks, 1x1-conv heads, `(1, W)` class tokens."""
    grid = image // patch
    keys = {"latent_tokens": (tokens, enc[0])}

    def vit(prefix, width, layers):
        keys.update({f"{prefix}.class_embedding": (1, width), f"{prefix}.positional_embedding": (grid**2 + 1, width),
                     f"{prefix}.latent_token_positional_embedding": (tokens, width),
                     f"{prefix}.ln_pre.weight": (width,), f"{prefix}.ln_pre.bias": (width,),
                     f"{prefix}.ln_post.weight": (width,), f"{prefix}.ln_post.bias": (width,)})
        for i in range(layers):
            block = f"{prefix}.transformer.{i}"
            keys.update({f"{block}.ln_1.weight": (width,), f"{block}.ln_1.bias": (width,),
                         f"{block}.attn.in_proj_weight": (3 * width, width), f"{block}.attn.in_proj_bias": (3 * width,),
                         f"{block}.attn.out_proj.weight": (width, width), f"{block}.attn.out_proj.bias": (width,),
                         f"{block}.ln_2.weight": (width,), f"{block}.ln_2.bias": (width,),
                         f"{block}.mlp.c_fc.weight": (4 * width, width), f"{block}.mlp.c_fc.bias": (4 * width,),
                         f"{block}.mlp.c_proj.weight": (width, 4 * width), f"{block}.mlp.c_proj.bias": (width,)})

    keys.update({"encoder.patch_embed.weight": (enc[0], 3, patch, patch), "encoder.patch_embed.bias": (enc[0],)})
    vit("encoder", enc[0], enc[1])
    keys.update({"encoder.conv_out.weight": (token_size, enc[0], 1, 1), "encoder.conv_out.bias": (token_size,),
                 "decoder.decoder_embed.weight": (dec[0], token_size), "decoder.decoder_embed.bias": (dec[0],),
                 "decoder.mask_token": (1, 1, dec[0])})
    vit("decoder", dec[0], dec[1])
    if legacy:
        keys.update({"decoder.ffn.0.weight": (2 * dec[0], dec[0], 1, 1), "decoder.ffn.0.bias": (2 * dec[0],),
                     "decoder.ffn.2.weight": (proxy_codes, 2 * dec[0], 1, 1), "decoder.ffn.2.bias": (proxy_codes,)})
    else:
        keys.update({"decoder.ffn.0.weight": (patch * patch * 3, dec[0], 1, 1),
                     "decoder.ffn.0.bias": (patch * patch * 3,),
                     "decoder.conv_out.weight": (3, 3, 3, 3), "decoder.conv_out.bias": (3,)})
    keys["quantize.embedding.weight"] = (codebook, token_size)
    if pixel is not None:  # the MaskGIT-VQGAN decoder and codebook under TiTok's attribute names
        vqgan = vqgan_official_layout(3, pixel["hidden_channels"], pixel["channel_mult"], pixel["num_res_blocks"],
                                      pixel["z_channels"], pixel["codebook_size"])
        keys.update({f"pixel_{key}": shape for key, shape in vqgan.items() if key.startswith("decoder.")})
        keys["pixel_quantize.embedding.weight"] = vqgan["quantize.embedding.weight"]
    return keys


def tiny_layout(legacy: bool, pixel: bool = True) -> dict[str, tuple[int, ...]]:
    return official_titok_layout(TINY["image"], TINY["patch"], TINY["enc"], TINY["dec"], TINY["tokens"],
                                 TINY["token_size"], TINY["codebook"], legacy, proxy_codes=PIXEL["codebook_size"],
                                 pixel=PIXEL if legacy and pixel else None)


@pytest.mark.parametrize("name", ["titok_l32", "titok_b64", "titok_s128", "titok_bl64_vq8k", "titok_bl128_vq8k",
                                  "titok_sl256_vq8k"])
def test_every_key_of_the_released_layouts_converts(name):
    converter = load_converter()
    vq = converter.TITOK_CONFIGS[name]
    sizes = converter.TITOK_VIT_SIZES
    released = MaskGITVQGANConfig.from_preset("maskgit-imagenet-f16-256")
    pixel = {field: getattr(released, field) for field in PIXEL} if vq["is_legacy"] else None
    layout = official_titok_layout(256, 16, sizes[vq["vit_enc_model_size"]], sizes[vq["vit_dec_model_size"]],
                                   vq["num_latent_tokens"], vq["token_size"], vq["codebook_size"], vq["is_legacy"],
                                   pixel=pixel)
    with torch.device("meta"):
        state = {key: torch.empty(shape) for key, shape in layout.items()}
    config = converter.resolve_config(name)
    converted = converter.convert_state_dict(state, config)
    assert {key: tuple(t.shape) for key, t in converted.items()} == converter.expected_shapes(config)
    assert len(converted) == len(layout)  # one tensor of ours per official tensor: nothing dropped or invented
    assert (config.legacy_latent_projection, config.pixel_decoder is not None) == (vq["is_legacy"],) * 2
    assert (config.causal, config.spectral_supervision, config.class_token) == (False, False, True)
    assert config.encoder_hidden_size == sizes[vq["vit_enc_model_size"]][0]
    assert config.decoder_num_hidden_layers == sizes[vq["vit_dec_model_size"]][1]


def test_released_l32_has_the_published_structure():
    converter = load_converter()
    config = converter.resolve_config("titok_l32")
    assert (config.num_latent_tokens, config.codebook_size, config.token_dim) == (32, 4096, 12)
    assert config.pixel_decoder == {field: getattr(MaskGITVQGANConfig.from_preset("maskgit-imagenet-f16-256"), field)
                                    for field in config.pixel_decoder}
    assert config.layer_norm_eps == 1e-5 and config.l2_normalize_codebook


# ---------------------------------------------------------------------------------------------------- a reference


class ReferenceBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x):  # (L, B, W), sequence first as nn.MultiheadAttention's default
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ReferenceViT(nn.Module):
    def __init__(self, width, layers, heads, grid, tokens):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(1, width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) * width**-0.5)
        self.latent_token_positional_embedding = nn.Parameter(torch.randn(tokens, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ReferenceBlock(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)

    def run(self, image_side, latents):
        """`[class; image_side] + positional`, then `latents`; returns the normed outputs of both parts."""
        batch = image_side.shape[0]
        image_side = torch.cat([self.class_embedding.expand(batch, 1, -1), image_side], 1) + self.positional_embedding
        latents = latents + self.latent_token_positional_embedding[: latents.shape[1]]
        x = self.ln_pre(torch.cat([image_side, latents], 1)).transpose(0, 1)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x.transpose(0, 1))  # per token, so norming both parts at once is the same
        return x[:, 1 : image_side.shape[1]], x[:, image_side.shape[1]:]


class ReferenceTiTok(nn.Module):
    """TiTok's forward as the official modules compute it, on [0, 1] images, with the official parameter names."""

    def __init__(self, legacy: bool):
        super().__init__()
        grid = TINY["image"] // TINY["patch"]
        (enc_w, enc_l, enc_h), (dec_w, dec_l, dec_h) = TINY["enc"], TINY["dec"]
        self.legacy, self.grid, self.tokens, self.token_size = legacy, grid, TINY["tokens"], TINY["token_size"]
        self.latent_tokens = nn.Parameter(torch.randn(TINY["tokens"], enc_w) * enc_w**-0.5)
        self.encoder = ReferenceViT(enc_w, enc_l, enc_h, grid, TINY["tokens"])
        self.encoder.patch_embed = nn.Conv2d(3, enc_w, TINY["patch"], stride=TINY["patch"])
        self.encoder.conv_out = nn.Conv2d(enc_w, TINY["token_size"], 1)
        self.decoder = ReferenceViT(dec_w, dec_l, dec_h, grid, TINY["tokens"])
        self.decoder.decoder_embed = nn.Linear(TINY["token_size"], dec_w)
        self.decoder.mask_token = nn.Parameter(torch.randn(1, 1, dec_w) * dec_w**-0.5)
        if legacy:
            self.decoder.ffn = nn.Sequential(nn.Conv2d(dec_w, 2 * dec_w, 1), nn.Tanh(),
                                             nn.Conv2d(2 * dec_w, PIXEL["codebook_size"], 1))
            self.pixel_quantize = nn.Module()
            self.pixel_quantize.embedding = nn.Embedding(PIXEL["codebook_size"], PIXEL["z_channels"])
            self.pixel_decoder = PixelDecoder(3, PIXEL["hidden_channels"], PIXEL["channel_mult"],
                                              PIXEL["num_res_blocks"], PIXEL["z_channels"])
        else:
            self.decoder.ffn = nn.Sequential(nn.Conv2d(dec_w, TINY["patch"] ** 2 * 3, 1))
            self.decoder.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(TINY["codebook"], TINY["token_size"])

    def codebook(self):
        weight = self.quantize.embedding.weight
        return F.normalize(weight, dim=-1) if self.legacy else weight

    def encode(self, images01):
        patches = self.encoder.patch_embed(images01).flatten(2).transpose(1, 2)
        latents = self.latent_tokens.expand(images01.shape[0], -1, -1)
        _, latents = self.encoder.run(patches, latents)
        batch, width = latents.shape[0], latents.shape[2]
        if self.legacy:  # the is_legacy reshape (not a transpose)
            grid = latents.reshape(batch, width, self.tokens, 1)
        else:
            grid = latents.reshape(batch, self.tokens, width, 1).permute(0, 2, 1, 3)
        z = self.encoder.conv_out(grid).reshape(batch, self.token_size, self.tokens).transpose(1, 2)  # (B, N, D)
        if self.legacy:
            z = F.normalize(z, dim=-1)
        distances = (z.unsqueeze(2) - self.codebook()).pow(2).sum(-1)
        return z, distances.argmin(-1)

    def decode(self, codes):
        x = self.decoder.decoder_embed(self.codebook()[codes])
        masks = self.decoder.mask_token.expand(codes.shape[0], self.grid**2, -1)
        patches, _ = self.decoder.run(masks, x)
        batch, width = patches.shape[0], patches.shape[2]
        patches = patches.transpose(1, 2).reshape(batch, width, self.grid, self.grid)
        out = self.decoder.ffn(patches)
        if self.legacy:
            soft = torch.einsum("nchw,cd->ndhw", out.softmax(1), self.pixel_quantize.embedding.weight)
            return self.pixel_decoder(soft.contiguous()), out
        p = TINY["patch"]  # 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
        image = out.reshape(batch, p, p, 3, self.grid, self.grid).permute(0, 3, 4, 1, 5, 2)
        return self.decoder.conv_out(image.reshape(batch, 3, self.grid * p, self.grid * p)), None


@torch.no_grad()
def randomized_reference(legacy: bool, seed: int = 0) -> ReferenceTiTok:
    torch.manual_seed(seed)
    reference = ReferenceTiTok(legacy).eval()
    for name, parameter in reference.named_parameters():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "norm1.weight",
                          "norm2.weight", "norm_out.weight")):
            parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
        elif name.endswith("bias"):
            parameter.copy_(0.1 * torch.randn_like(parameter))
    return reference


@pytest.mark.parametrize("legacy", [True, False])
def test_reference_has_exactly_the_official_layout(legacy):
    state = randomized_reference(legacy).state_dict()
    assert {key: tuple(t.shape) for key, t in state.items()} == tiny_layout(legacy)


@pytest.mark.parametrize("legacy", [True, False], ids=["two-stage", "rgb-head"])
def test_converted_tokenizer_reproduces_the_reference(legacy):
    converter = load_converter()
    reference = randomized_reference(legacy)
    config = tiny_config(legacy)
    model = SpectralTokenizer(config).eval()
    model.load_state_dict(converter.convert_state_dict(reference.state_dict(), config), strict=True)

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_latents, ref_codes = reference.encode(images)
        encoded = model.encode(2 * images - 1)
        assert torch.allclose(F.normalize(encoded.latents, dim=-1) if legacy else encoded.latents, ref_latents,
                              atol=1e-5)
        assert torch.equal(encoded.codes, ref_codes)
        codes = torch.randint(0, TINY["codebook"], (3, TINY["tokens"]), generator=torch.Generator().manual_seed(2))
        ref_images, ref_logits = reference.decode(codes)
        decoded = model.decode(codes)
    assert torch.allclose(decoded.reconstruction, 2 * ref_images - 1, atol=1e-5)
    if legacy:
        assert torch.allclose(decoded.proxy_logits, ref_logits, atol=1e-5)
    else:
        assert decoded.proxy_logits is None
    assert (2 * ref_images - 1).abs().max() > 0.5  # not a degenerate comparison


# ---------------------------------------------------------------------------------------------------- the script


@pytest.fixture
def tiny_converter(monkeypatch):
    """The converter with a `--config tiny` / `--config tiny-rgb` (the official sizes are too big for CI)."""
    converter = load_converter()
    real = converter.resolve_config
    tiny = {"tiny": tiny_config(True), "tiny-rgb": tiny_config(False)}
    monkeypatch.setattr(converter, "resolve_config", lambda name: tiny[name] if name in tiny else real(name))
    return converter


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_cli_writes_a_loadable_tokenizer(tmp_path, capsys, tiny_converter, suffix):
    reference = randomized_reference(True)
    checkpoint = tmp_path / f"titok{suffix}"
    state = {key: value.contiguous() for key, value in reference.state_dict().items()}
    torch.save(state, checkpoint) if suffix == ".bin" else save_file(state, checkpoint)
    assert tiny_converter.main(["--checkpoint", str(checkpoint), "--config", "tiny", "--output",
                                str(tmp_path / "out")]) == 0
    assert "proxy codes + MaskGIT-VQGAN pixel decoder" in capsys.readouterr().out
    model = SpectralTokenizer.from_pretrained(tmp_path / "out").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, ref_codes = reference.encode(images)
        assert torch.equal(model.encode(2 * images - 1).codes, ref_codes)
        assert torch.allclose(model.decode(ref_codes).reconstruction, 2 * reference.decode(ref_codes)[0] - 1,
                              atol=1e-5)


def test_stage1_checkpoint_takes_its_pixel_decoder_from_a_vqgan(tmp_path, tiny_converter):
    reference = randomized_reference(True)
    stage1 = {key: value for key, value in reference.state_dict().items() if not key.startswith("pixel_")}
    config = tiny_config(True)
    with pytest.raises(ValueError, match=r"missing.*stage-1 checkpoint: pass --vqgan"):
        tiny_converter.convert_state_dict(stage1, config)
    vqgan = MaskGITVQGAN(MaskGITVQGANConfig(image_size=32, **PIXEL))
    converted = tiny_converter.convert_state_dict(stage1, config, tiny_converter.vqgan_pixel_weights(vqgan))
    assert torch.equal(converted["pixel_decoder.conv_out.weight"], vqgan.decoder.conv_out.weight)
    assert torch.equal(converted["pixel_quantize.embedding.weight"], vqgan.quantize.embedding.weight)
    with pytest.raises(ValueError, match="has its own pixel decoder"):
        tiny_converter.convert_state_dict(reference.state_dict(), config, tiny_converter.vqgan_pixel_weights(vqgan))


@pytest.mark.parametrize("change, named", [
    ("missing", "1 missing: decoder.token_embed.weight"),
    ("extra", "unexpected official keys: encoder.transformer.9.ln_1.weight"),
    ("shape", "quantize.embedding.weight -> quantizer.codebook.weight (17, 4) (expected (16, 4))"),
    ("integer", "not floating point: latent_tokens"),
])
def test_cli_names_bad_keys_and_writes_nothing(tmp_path, capsys, tiny_converter, change, named):
    state = randomized_reference(True).state_dict()
    if change == "missing":
        del state["decoder.decoder_embed.weight"]
    elif change == "extra":
        state["encoder.transformer.9.ln_1.weight"] = torch.ones(32)
    elif change == "shape":
        state["quantize.embedding.weight"] = torch.zeros(17, 4)
    else:
        state["latent_tokens"] = state["latent_tokens"].long()
    torch.save(state, tmp_path / "bad.bin")
    status = tiny_converter.main(["--checkpoint", str(tmp_path / "bad.bin"), "--config", "tiny", "--output",
                                  str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("convert_titok: error:") and err.count("\n") == 1
    assert named in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_wrong_config_file_or_output(tmp_path, capsys, tiny_converter):
    torch.save(randomized_reference(True).state_dict(), tmp_path / "tiny.bin")
    args = ["--checkpoint", str(tmp_path / "tiny.bin"), "--output", str(tmp_path / "a")]
    assert tiny_converter.main(args + ["--config", "titok_l32"]) == 2  # the released sizes: nothing fits
    assert "missing" in capsys.readouterr().err
    assert tiny_converter.main(args + ["--config", "titok_xl"]) == 2
    assert "neither one of" in capsys.readouterr().err
    (tmp_path / "vae.json").write_text(json.dumps({"model": {"vq_model": {"quantize_mode": "vae"}}}))
    assert tiny_converter.main(args + ["--config", str(tmp_path / "vae.json")]) == 2
    assert "continuous tokens" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("x")
    assert tiny_converter.main(["--checkpoint", str(tmp_path / "tiny.bin"), "--config", "tiny", "--output",
                                str(tmp_path / "b")]) == 2
    assert "non-empty directory" in capsys.readouterr().err
    (tmp_path / "c.bin").write_bytes(b"not a checkpoint")
    assert tiny_converter.main(["--checkpoint", str(tmp_path / "c.bin"), "--config", "tiny", "--output",
                                str(tmp_path / "c")]) == 2
    assert "not a readable weights-only PyTorch checkpoint" in capsys.readouterr().err


def test_official_config_json_gives_the_named_config(tmp_path):
    """The config.json that TiTok's Hub checkpoints carry (OmegaConf dumped to JSON) resolves like the name."""
    converter = load_converter()
    official = {"experiment": {"tokenizer_checkpoint": "tokenizer_titok_b64.bin"},
                "model": {"vq_model": converter.TITOK_CONFIGS["titok_b64"]},
                "dataset": {"preprocessing": {"crop_size": 256}}}
    (tmp_path / "config.json").write_text(json.dumps(official))
    assert converter.resolve_config(str(tmp_path / "config.json")).to_dict() == \
        converter.resolve_config("titok_b64").to_dict()
    defaults = {key: value for key, value in converter.TITOK_CONFIGS["titok_b64"].items()
                if key not in ("is_legacy", "finetune_decoder", "quantize_mode")}  # the official defaults fill in
    assert converter.tokenizer_config(defaults).to_dict() == converter.resolve_config("titok_b64").to_dict()
