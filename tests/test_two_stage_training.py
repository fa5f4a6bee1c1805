"""TiTok's two-stage recipe in examples/train_tokenizer.py on tiny models (in-process `main()` runs).

Stage 1 (`--proxy_teacher`): the decoder's proxy logits learn a frozen MaskGIT-VQGAN's codes of the nested targets.
Stage 2 (`--train_decoder_only` from the stage-1 tokenizer): encoder and codebook frozen, decoder + pixel decoder
trained with L2 + GAN. The teacher is a tiny random MaskGIT-VQGAN whose patch grid is the tokenizer's."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from safetensors.torch import load_file
from test_training_scripts import ENV, LAUNCH, TOKENIZER_SCRIPT, load_script, run, run_in_process

from spectralar_hf import MaskGITVQGAN, SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.training.checkpointing import model_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")

# patch 8 on 32 px: a 4x4 grid; the pixel decoder's 4 levels upsample by 8
PIXEL_DECODER = dict(hidden_channels=16, channel_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=8, codebook_size=32,
                     norm_num_groups=8)
OVERRIDES = dict(num_channels=1, codebook_size=64, pixel_decoder=PIXEL_DECODER)


def tokenizer_config(**pixel_decoder) -> SpectralTokenizerConfig:
    return SpectralTokenizerConfig.from_preset("tiny-32", **dict(OVERRIDES, pixel_decoder=dict(PIXEL_DECODER,
                                                                                             **pixel_decoder)))


def save_teacher(folder: Path, seed: int = 0, **pixel_decoder) -> Path:
    torch.manual_seed(seed)
    MaskGITVQGAN(tokenizer_config(**pixel_decoder).pixel_decoder_config).save_pretrained(folder)
    return folder


def stage1_args(data: Path, output: Path, teacher: Path, *extra, overrides: dict = OVERRIDES) -> list:
    # 8 images, batch 8: every step sees the same fixed batch (with a random prefix per sample)
    return ["--idx_data_dir", data, "--preset", "tiny-32", "--config_overrides", json.dumps(overrides),
            "--proxy_teacher", teacher, "--output_dir", output, "--train_batch_size", 8, "--max_train_samples", 8,
            "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 2,
            "--learning_rate", 3e-3, *extra]


def log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(16, seed=5, size=32)), np.arange(16) % 10)
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def stage1(idx_folder, teacher, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("stage1")
    run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, output, teacher, "--max_train_steps", 30,
                                                  "--checkpointing_steps", 30))
    return output


def test_stage1_proxy_cross_entropy_decreases_and_the_pixel_decoder_is_the_teachers(stage1, teacher):
    records = log(stage1)
    assert [r["step"] for r in records] == list(range(1, 31))
    ce = [r["proxy_ce"] for r in records]
    assert np.all(np.isfinite(ce)) and all(0 <= r["proxy_accuracy"] <= 1 for r in records)
    first, last = np.mean(ce[:3]), np.mean(ce[-3:])
    print(f"proxy_ce first {first:.4f} last {last:.4f}")
    assert last < 0.7 * first, ce
    tokenizer = load_file(stage1 / "tokenizer" / "model.safetensors")
    vqgan = load_file(teacher / "model.safetensors")
    for name, value in vqgan.items():  # copied from the teacher, frozen in stage 1
        if name.startswith("decoder."):
            assert torch.equal(tokenizer["pixel_" + name], value), name
    assert torch.equal(tokenizer["pixel_quantize.embedding.weight"], vqgan["quantize.embedding.weight"])
    recorded = json.loads((stage1 / "checkpoint-30" / "run_config.json").read_text())
    assert recorded["components"]["proxy_teacher"] == model_fingerprint(teacher)


def test_stage1_resumes_with_its_teacher_and_refuses_another(stage1, idx_folder, teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stage1, run)
    other = save_teacher(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="proxy_teacher"):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, run, other, "--max_train_steps", 32,
                                                      "--resume_from_checkpoint", "latest"))
    run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, run, teacher, "--max_train_steps", 32,
                                                  "--resume_from_checkpoint", "latest"))
    assert [r["step"] for r in log(run)][-3:] == [30, 31, 32]


def test_stage2_trains_the_decoders_and_freezes_encoder_and_codebook(stage1, idx_folder, tmp_path):
    output = tmp_path / "stage2"
    run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--train_decoder_only",
                   "--pretrained_model_name_or_path", stage1 / "tokenizer", "--output_dir", output,
                   "--train_batch_size", 8, "--max_train_samples", 8, "--report_to", "none", "--logging_steps", 1,
                   "--validation_steps", 1000, "--lr_warmup_steps", 1, "--learning_rate", 1e-3, "--max_train_steps",
                   4, "--gan_weight", 0.1, "--adaptive_gan_weight", "--lecam_weight", 0.001,
                   "--discriminator_channels", 8, "--discriminator_stages", 2, "--use_ema")
    before = load_file(stage1 / "tokenizer" / "model.safetensors")
    after = load_file(output / "tokenizer" / "model.safetensors")
    assert before.keys() == after.keys()
    frozen = [name for name in before if name.startswith(("encoder.", "quantizer."))]
    assert any(n.startswith("quantizer.codebook") for n in frozen) and "encoder.latent_tokens" in frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    # TiTok's finetune_decoder trains the pixel decoder's proxy codebook too (pixel_quantize is not frozen there)
    for prefix in ("decoder.ffn.", "decoder.layers.", "pixel_decoder.", "pixel_quantize."):
        names = [name for name in before if name.startswith(prefix)]
        assert names and any(not torch.equal(before[n], after[n]) for n in names), prefix
    assert "generator_adversarial_loss" in log(output)[-1]
    tokenizer = SpectralTokenizer.from_pretrained(output / "tokenizer")
    assert tokenizer.config.pixel_decoder is not None


def test_stage2_with_the_full_length_term_records_it_in_the_saved_config(stage1, teacher, idx_folder, tmp_path,
                                                                          capsys):
    """--full_length_loss_weight (ours) switches the full-length term on for a pretrained tokenizer: every step logs
    it, the fine-tuned tokenizer's config keeps the weight (the stage-1 folder is untouched), and the codes stay."""
    output = tmp_path / "stage2"
    run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--train_decoder_only",
                   "--pretrained_model_name_or_path", stage1 / "tokenizer", "--output_dir", output,
                   "--train_batch_size", 8, "--max_train_samples", 8, "--report_to", "none", "--logging_steps", 1,
                   "--validation_steps", 1000, "--lr_warmup_steps", 1, "--learning_rate", 1e-3, "--max_train_steps",
                   3, "--full_length_loss_weight", 0.5)
    records = log(output)
    assert len(records) == 3 and all(r["full_length_loss"] > 0 for r in records)
    assert SpectralTokenizer.from_pretrained(output / "tokenizer").config.full_length_loss_weight == 0.5
    assert SpectralTokenizer.from_pretrained(stage1 / "tokenizer").config.full_length_loss_weight == 0.0
    before = load_file(stage1 / "tokenizer" / "model.safetensors")
    after = load_file(output / "tokenizer" / "model.safetensors")
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(("encoder.", "quantizer.")))

    with pytest.raises(SystemExit):  # stage 1 decodes no pixels
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "a", teacher,
                                                      "--full_length_loss_weight", 1))
    assert "--proxy_teacher (TiTok's stage 1) decodes no pixels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--output_dir", tmp_path / "b",
                       "--config_overrides", '{"full_length_loss_weight": 1}', "--full_length_loss_weight", 1)
    assert "full_length_loss_weight is given twice" in capsys.readouterr().err
    plain = tmp_path / "plain"  # no nested supervision: every step already decodes all N tokens
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1,
                                                          spectral_supervision=False)).save_pretrained(plain)
    with pytest.raises(ValueError, match="--full_length_loss_weight: .*spectral_supervision is False"):
        run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--output_dir", tmp_path / "c",
                       "--pretrained_model_name_or_path", plain, "--full_length_loss_weight", 1,
                       "--max_train_steps", 1)


def test_stage2_with_a_new_pixel_decoder_keeps_everything_else(stage1, idx_folder, tmp_path):
    """--new_pixel_decoder: the pixel decoder is rebuilt with new sizes and fresh weights; every other tensor starts
    from the stage-1 tokenizer (checked on the script's helper), and the trained result keeps the codes."""
    script = load_script(TOKENIZER_SCRIPT)
    sizes = {"channel_mult": [1, 1, 2, 4], "num_res_blocks": 2}
    pretrained = SpectralTokenizer.from_pretrained(stage1 / "tokenizer")
    torch.manual_seed(0)
    replaced = script.replace_pixel_decoder(pretrained, sizes)
    assert replaced.config.pixel_decoder == {**pretrained.config.pixel_decoder, **sizes}
    before, after = pretrained.state_dict(), replaced.state_dict()
    kept = [name for name in before if not name.startswith("pixel_decoder.")]
    assert "pixel_quantize.embedding.weight" in kept and "decoder.ffn.2.weight" in kept
    assert all(torch.equal(before[name], after[name]) for name in kept)
    torch.manual_seed(0)  # fresh: the weights of a new tokenizer of that config under the same seed
    fresh = SpectralTokenizer(replaced.config).state_dict()
    new = [name for name in after if name.startswith("pixel_decoder.")]
    assert set(new) - set(before)  # the second res block of each level
    assert all(torch.equal(after[name], fresh[name]) for name in new)
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    codes = replaced.encode(images).codes
    assert torch.equal(codes, pretrained.encode(images).codes)
    assert replaced.decode(codes).reconstruction.shape == (2, 1, 32, 32)

    output = tmp_path / "stage2"
    run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--train_decoder_only",
                   "--pretrained_model_name_or_path", stage1 / "tokenizer", "--new_pixel_decoder", json.dumps(sizes),
                   "--output_dir", output, "--train_batch_size", 8, "--max_train_samples", 8, "--report_to", "none",
                   "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1, "--learning_rate", 1e-3,
                   "--max_train_steps", 3, "--checkpointing_steps", 2)
    trained = SpectralTokenizer.from_pretrained(output / "tokenizer")
    assert trained.config.pixel_decoder == replaced.config.pixel_decoder
    saved = load_file(output / "tokenizer" / "model.safetensors")
    assert saved.keys() == after.keys()
    assert all(torch.equal(saved[n], before[n]) for n in before if n.startswith(("encoder.", "quantizer.")))
    # a resume rebuilds the replaced model and continues it (the checkpoint's shapes are the new decoder's)
    run_in_process(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--train_decoder_only",
                   "--pretrained_model_name_or_path", stage1 / "tokenizer", "--new_pixel_decoder", json.dumps(sizes),
                   "--output_dir", output, "--train_batch_size", 8, "--max_train_samples", 8, "--report_to", "none",
                   "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1, "--learning_rate", 1e-3,
                   "--max_train_steps", 4, "--resume_from_checkpoint", "latest")
    assert [r["step"] for r in log(output)][-2:] == [3, 4]


def test_new_pixel_decoder_errors(stage1, idx_folder, tmp_path, capsys):
    common = ["--idx_data_dir", idx_folder, "--output_dir", tmp_path / "out", "--max_train_steps", 1]
    stage2 = ["--train_decoder_only", "--pretrained_model_name_or_path", stage1 / "tokenizer"]
    for extra, message in [
        (["--new_pixel_decoder", '{"num_res_blocks": 2}'], "add --train_decoder_only"),
        ([*stage2, "--new_pixel_decoder", '{"codebook_size": 64}'], "cannot change ['codebook_size']: the proxy"),
        ([*stage2, "--new_pixel_decoder", '{"image_size": 64}'], "cannot change ['image_size']"),
        ([*stage2, "--new_pixel_decoder", '{"num_res_block": 2}'], "no field 'num_res_block' (did you mean"),
        ([*stage2, "--new_pixel_decoder", "{}"], "--new_pixel_decoder is empty"),
        ([*stage2, "--new_pixel_decoder", "[2"], "is not valid JSON"),
    ]:
        with pytest.raises(SystemExit):
            run_in_process(TOKENIZER_SCRIPT, *common, *extra)
        assert message in capsys.readouterr().err, extra
    with pytest.raises(ValueError, match="upsamples by 4 .* patch_size is 8"):  # the config's own check
        run_in_process(TOKENIZER_SCRIPT, *common, *stage2, "--new_pixel_decoder", '{"channel_mult": [1, 2, 2]}')
    plain = tmp_path / "plain"
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).save_pretrained(plain)
    with pytest.raises(ValueError, match="has no pixel decoder .* to replace"):
        run_in_process(TOKENIZER_SCRIPT, *common, "--train_decoder_only", "--pretrained_model_name_or_path", plain,
                       "--new_pixel_decoder", '{"num_res_blocks": 2}')
    assert not (tmp_path / "out" / "tokenizer").exists()


def test_both_stages_under_a_two_process_accelerate_launch(idx_folder, teacher, tmp_path, monkeypatch):
    """`accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): stage 1 then stage 2, as on a GPU node."""
    monkeypatch.setitem(ENV, "ACCELERATE_USE_CPU", "1")
    launcher = [sys.executable, *LAUNCH]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    run(TOKENIZER_SCRIPT, *stage1_args(idx_folder, stage1, teacher, "--max_train_steps", 3, "--train_batch_size", 4),
        launcher=launcher)
    run(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, "--train_decoder_only", "--pretrained_model_name_or_path",
        stage1 / "tokenizer", "--output_dir", stage2, "--train_batch_size", 4, "--max_train_samples", 8,
        "--report_to", "none", "--max_train_steps", 2, "--gan_weight", 0.1, "--discriminator_channels", 8,
        "--discriminator_stages", 2, launcher=launcher)
    for output in (stage1, stage2):
        assert json.loads((output / "run_info.json").read_text())["num_processes"] == 2
    assert all(np.isfinite(r["proxy_ce"]) for r in log(stage1))
    before = load_file(stage1 / "tokenizer" / "model.safetensors")
    after = load_file(stage2 / "tokenizer" / "model.safetensors")
    for name in before:
        if name.startswith(("encoder.", "quantizer.")):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["decoder.ffn.2.weight"], after["decoder.ffn.2.weight"])


def test_clear_errors(idx_folder, teacher, tmp_path, capsys):
    plain = dict(num_channels=1, codebook_size=64)
    with pytest.raises(ValueError, match="needs a tokenizer with a pixel decoder"):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "a", teacher, "--max_train_steps", 1,
                                                      overrides=plain))
    mismatched = save_teacher(tmp_path / "mismatched", codebook_size=48)
    with pytest.raises(ValueError, match="codebook_size"):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "b", mismatched, "--max_train_steps",
                                                      1))
    not_a_vqgan = tmp_path / "tokenizer"
    SpectralTokenizer(tokenizer_config()).save_pretrained(not_a_vqgan)
    with pytest.raises(ValueError, match="not a MaskGITVQGAN folder"):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "c", not_a_vqgan, "--max_train_steps",
                                                      1))
    with pytest.raises(SystemExit):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "d", teacher, "--gan_weight", 0.1))
    assert "--gan_weight belong to stage 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_in_process(TOKENIZER_SCRIPT, *stage1_args(idx_folder, tmp_path / "e", teacher, "--train_decoder_only",
                                                      "--pretrained_model_name_or_path", not_a_vqgan))
    assert "--train_decoder_only is stage 2" in capsys.readouterr().err
