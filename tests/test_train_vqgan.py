"""examples/train_vqgan.py on a tiny generated IDX dataset (in-process `main()` runs on one thread): learning on a fixed
batch, the saved vqgan/ and its vqgan_stats.json, the pixel losses, an exact resume with every loss on, the saved
VQGAN as train_tokenizer.py's --proxy_teacher, the fmnist-f4 preset against the fmnist-32 tokenizer, and clear errors
for bad arguments.

The "tiny" preset (2 levels, 32 codes) with num_channels 1 works on 16 px images (the 32 px blobs are resized); the
runs that need 32 px (LPIPS-AlexNet, a tiny-32 tokenizer's patch grid) say so in --config_overrides."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from safetensors.torch import load_file, save_file
from test_training_scripts import ENV, TOKENIZER_SCRIPT, assert_same_weights, load_script, run_in_process

from spectralar_hf import MaskGITVQGAN, MaskGITVQGANConfig, SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.training.checkpointing import run_config
from spectralar_hf.training.data import ImageTransform, load_idx_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).parents[1]
VQGAN_SCRIPT = str(ROOT / "examples" / "train_vqgan.py")
GRAY = {"num_channels": 1}
# A VQGAN whose decoder is a tiny-32 tokenizer's pixel decoder (patch 8 on 32 px: 4 levels, a 4 x 4 grid).
TEACHER = dict(image_size=32, num_channels=1, hidden_channels=16, channel_mult=[1, 1, 2, 2], num_res_blocks=1,
               z_channels=8, codebook_size=32, norm_num_groups=8)


def vqgan_args(data: Path, output: Path, *extra, overrides: dict = GRAY) -> list:
    return ["--idx_data_dir", data, "--preset", "tiny", "--config_overrides", json.dumps(overrides),
            "--output_dir", output, "--train_batch_size", 8, "--report_to", "none", "--logging_steps", 1,
            "--validation_steps", 1000, "--lr_warmup_steps", 2, *extra]


def log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def unit_images(folder: Path, count: int, size: int) -> torch.Tensor:
    """The first `count` IDX images as the script sees them (centre crop, no augmentation) in [0, 1]."""
    images = load_idx_dataset(folder)["image"][:count]
    pixels = torch.stack([ImageTransform(size, 1)(np.asarray(image, dtype=np.uint8)) for image in images])
    return (pixels + 1) / 2


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(16, seed=5, size=32)), np.arange(16) % 10)
    return root


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    """Random LPIPS-AlexNet weights in the converted safetensors layout (non-negative heads)."""
    from spectralar_hf.evaluation import LPIPS

    torch.manual_seed(0)
    model = LPIPS("alex")
    for head in model.heads:
        head.weight.data.abs_()
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def trained(idx_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("vqgan-run")
    # 8 images, batch 8: every step sees the same fixed batch
    run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, output, "--max_train_samples", 8, "--max_train_steps", 40,
                                             "--learning_rate", 3e-3, "--checkpointing_steps", 40, "--use_ema"))
    return output


def ema_shadow(checkpoint: Path) -> list[torch.Tensor]:
    """The EMA weights an accelerate checkpoint holds (the custom object with `shadow_params`)."""
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, weights_only=True)
        if isinstance(state, dict) and "shadow_params" in state:
            return state["shadow_params"]
    raise AssertionError(f"no EMA state in {checkpoint}")


def test_learns_on_a_fixed_batch_and_saves_the_configured_vqgan(trained):
    records = log(trained)
    assert [r["step"] for r in records] == list(range(1, 41))
    loss = [r["loss"] for r in records]
    assert np.all(np.isfinite(loss))
    first, last = np.mean(loss[:3]), np.mean(loss[-3:])
    print(f"loss first {first:.4f} last {last:.4f}")
    assert last < 0.3 * first, loss
    vqgan = MaskGITVQGAN.from_pretrained(trained / "vqgan")
    expected = MaskGITVQGANConfig.from_preset("tiny", **GRAY)
    assert run_config("", vqgan.config)["model"] == run_config("", expected)["model"]
    assert list((trained / "samples").glob("reconstructions-*.png"))
    # --use_ema: the saved weights are the EMA weights, not the last trained ones
    shadow = ema_shadow(trained / "checkpoint-40")
    parameters = [p.detach() for p in vqgan.parameters()]
    assert len(shadow) == len(parameters) and all(torch.equal(a, b) for a, b in zip(shadow, parameters))
    raw = load_file(trained / "checkpoint-40" / "model.safetensors")
    assert not torch.equal(raw["decoder.conv_out.weight"], vqgan.decoder.conv_out.weight.detach())


def test_stats_are_the_saved_models_codes_and_psnr(trained, idx_folder):
    stats = json.loads((trained / "vqgan_stats.json").read_text())
    vqgan = MaskGITVQGAN.from_pretrained(trained / "vqgan").eval()
    images = unit_images(idx_folder, 8, vqgan.config.image_size)
    with torch.no_grad():
        encoded = vqgan.encode(images)
        reconstruction = vqgan.decode(encoded.quantized).reconstruction
    mse = (reconstruction - images).pow(2).flatten(1).mean(1)
    assert stats["num_images"] == 8 and stats["codebook_size"] == 32
    assert stats["codes_used"] == encoded.codes.unique().numel()
    assert 1 <= stats["code_perplexity"] <= stats["codes_used"]
    assert stats["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-4)
    assert stats["psnr"] > 18, stats  # untrained: about 8 dB
    assert stats["pixel_decoder"] == dict(hidden_channels=32, channel_mult=[1, 2], num_res_blocks=1, z_channels=16,
                                          codebook_size=32)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_reconstruction_loss_is_measured_in_the_unit_range(kind, idx_folder, tmp_path):
    """Step 1's logged loss is the chosen pixel loss of the seeded initial model on the [0, 1] images."""
    output = tmp_path / kind
    run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, output, "--max_train_samples", 8, "--max_train_steps", 1,
                                             "--reconstruction_loss", kind, "--seed", 3))
    torch.manual_seed(3)
    initial = MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny", **GRAY))
    images = unit_images(idx_folder, 8, 16)
    with torch.no_grad():
        forward = initial(images)
    difference = forward.reconstruction - images
    expected = difference.pow(2).mean() if kind == "l2" else difference.abs().mean()
    record = log(output)[0]
    assert record["reconstruction_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert record["quantization_loss"] == pytest.approx(float(forward.quantization_loss), rel=1e-5)
    assert record["loss"] == pytest.approx(float(expected + forward.quantization_loss), rel=1e-5)


def test_resume_with_every_loss_on_continues_to_the_same_weights(idx_folder, lpips_weights, tmp_path):
    # 16 images, batch 8: 2 batches an epoch, the checkpoint at step 31 falls in the middle of one. Dead codes are
    # restarted from about step 34 on, after the resume: their usage EMA and generator must come back exactly.
    # LPIPS-AlexNet needs 32 px images.
    common = ["--max_train_steps", 44, "--checkpointing_steps", 31, "--learning_rate", 3e-3, "--use_ema",
              "--random_crop", "--random_flip", "--perceptual_weight", 0.1, "--lpips_weights", lpips_weights,
              "--gan_weight", 0.1, "--adaptive_gan_weight", "--discriminator_start", 2, "--lecam_weight", 0.001,
              "--discriminator_channels", 16, "--discriminator_stages", 2, "--eval_samples", 4]
    gray_32 = {**GRAY, "image_size": 32}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, straight, *common, overrides=gray_32))
    shutil.copytree(straight, resumed)  # as a run killed after its checkpoint: nothing of what came later
    for name in ("vqgan", "vqgan_stats.json", "samples"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, resumed, *common, "--resume_from_checkpoint", "latest",
                                             overrides=gray_32))
    assert_same_weights(straight / "vqgan" / "model.safetensors", resumed / "vqgan" / "model.safetensors")
    assert log(straight) == log(resumed)
    assert (json.loads((straight / "vqgan_stats.json").read_text())
            == json.loads((resumed / "vqgan_stats.json").read_text()))
    records = log(resumed)
    assert sum(r["codes_restarted"] for r in records if r["step"] > 31) > 0
    assert {"perceptual_loss", "adaptive_gan_weight", "generator_adversarial_loss", "discriminator_loss"} <= set(
        records[-1])


def tokenizer_stage1_args(data: Path, output: Path, teacher: Path, pixel_decoder: dict) -> list:
    overrides = {"num_channels": 1, "codebook_size": 64, "pixel_decoder": pixel_decoder}
    return ["--idx_data_dir", data, "--preset", "tiny-32", "--config_overrides", json.dumps(overrides),
            "--proxy_teacher", teacher, "--output_dir", output, "--train_batch_size", 8, "--max_train_samples", 8,
            "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
            "--max_train_steps", 2]


def test_a_saved_vqgan_is_titoks_proxy_teacher(idx_folder, tmp_path):
    vqgan_run = tmp_path / "vqgan-run"
    run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, vqgan_run, "--max_train_samples", 8, "--max_train_steps", 2,
                                             overrides=TEACHER))
    teacher = vqgan_run / "vqgan"
    # the dict the script reports is what the tokenizer's --config_overrides needs
    pixel_decoder = json.loads((vqgan_run / "vqgan_stats.json").read_text())["pixel_decoder"]
    run_in_process(TOKENIZER_SCRIPT, *tokenizer_stage1_args(idx_folder, tmp_path / "stage1", teacher, pixel_decoder))
    tokenizer = load_file(tmp_path / "stage1" / "tokenizer" / "model.safetensors")
    vqgan = load_file(teacher / "model.safetensors")
    decoder = [name for name in vqgan if name.startswith("decoder.")]
    assert decoder and all(torch.equal(tokenizer["pixel_" + name], vqgan[name]) for name in decoder)
    assert torch.equal(tokenizer["pixel_quantize.embedding.weight"], vqgan["quantize.embedding.weight"])
    assert "proxy_ce" in log(tmp_path / "stage1")[-1]
    with pytest.raises(ValueError, match=r"does not match the tokenizer's pixel_decoder.*codebook_size \(teacher 32, "
                                         r"tokenizer 48\)"):
        run_in_process(TOKENIZER_SCRIPT, *tokenizer_stage1_args(idx_folder, tmp_path / "mismatch", teacher,
                                                                {**pixel_decoder, "codebook_size": 48}))


def test_fmnist_f4_preset_is_the_fmnist_tokenizers_pixel_decoder():
    config = MaskGITVQGANConfig.from_preset("fmnist-f4")
    assert (config.image_size, config.num_channels, config.codebook_size) == (32, 1, 512)
    assert config.downsample_factor == 4 and config.latent_size == 8
    fields = load_script(VQGAN_SCRIPT).pixel_decoder_fields(config)
    assert set(fields) == {"hidden_channels", "channel_mult", "num_res_blocks", "z_channels", "codebook_size"}
    tokenizer = SpectralTokenizerConfig.from_preset("fmnist-32", pixel_decoder=fields)
    assert tokenizer.grid_size == config.latent_size
    wanted = tokenizer.pixel_decoder_config
    for name in ("num_channels", "codebook_size", "downsample_factor", "hidden_channels", "channel_mult",
                 "num_res_blocks", "z_channels", "codebook_dim", "norm_num_groups", "norm_eps"):
        assert getattr(wanted, name) == getattr(config, name), name
    with torch.no_grad():
        assert MaskGITVQGAN(config).encode(torch.rand(2, 1, 32, 32)).codes.shape == (2, 8, 8)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).save_pretrained(folder)
    return folder


DATA = ["--idx_data_dir", "IDX"]


@pytest.mark.parametrize("args,message", [
    ([*DATA, "--preset", "nope"], "--preset 'nope' is not a MaskGIT-VQGAN preset; choose one of fmnist-f4,"),
    ([*DATA, "--lecam_weight", "0.001"], "--lecam_weight regularises the discriminator: it needs --gan_weight > 0"),
    ([*DATA, "--adaptive_gan_weight"], "--adaptive_gan_weight scales the GAN term: it needs --gan_weight > 0"),
    ([*DATA, "--lpips_weights", "w.safetensors"],
     "--lpips_weights is the network of the perceptual loss: it needs --perceptual_weight > 0"),
    ([*DATA, "--config_overrides", '{"hidden_channels": 20}'], "must all be divisible by norm_num_groups 32"),
    ([*DATA, "--config_overrides", '{"image_size": 15}'], "not divisible by the downsampling factor 4"),
    ([*DATA, "--config_overrides", '{"hiden_channels": 32}'],
     "has no field 'hiden_channels' (did you mean 'hidden_channels'"),
    ([*DATA, "--config_overrides", "[32]"], "--config_overrides must be a JSON object"),
    ([*DATA, "--config_overrides", '{"num_channels": 1}', "--pretrained_model_name_or_path", "TOKENIZER"],
     "--config_overrides builds a new VQGAN; it cannot change --pretrained_model_name_or_path"),
    ([*DATA, "--pretrained_model_name_or_path", "TOKENIZER"], "not a MaskGITVQGAN folder"),
    ([], "give exactly one data source"),
], ids=["preset", "lecam", "adaptive", "lpips", "groupnorm", "downsampling", "typo", "not-an-object",
        "overrides-and-pretrained", "not-a-vqgan", "no-data"])
def test_bad_arguments_are_usage_errors_naming_the_flag(args, message, idx_folder, tokenizer_folder, tmp_path,
                                                        capsys):
    places = {"IDX": str(idx_folder), "TOKENIZER": str(tokenizer_folder)}
    argv = [places.get(arg, arg) for arg in args] + ["--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as error:
        load_script(VQGAN_SCRIPT).main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_bad_runs_raise_clear_errors_and_the_script_exits_2_with_one_line(idx_folder, trained, tmp_path):
    with pytest.raises(ValueError, match="--discriminator_stages 3 downsample 16 px images to nothing"):
        run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, tmp_path / "d", "--max_train_steps", 1, "--gan_weight",
                                                 0.1, "--discriminator_stages", 3))
    with pytest.raises(ValueError, match="holds an earlier run"):
        run_in_process(VQGAN_SCRIPT, *vqgan_args(idx_folder, trained, "--max_train_steps", 1))
    command = [sys.executable, VQGAN_SCRIPT, *map(str, vqgan_args(idx_folder, tmp_path / "b", "--train_batch_size",
                                                                  32))]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("train_vqgan.py: error: The dataset has 16 images, fewer than one batch of 32")
