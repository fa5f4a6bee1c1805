"""Nothing lost, nothing mixed: the run state of the examples/ scripts, and their answers to bad input.

- pretokenize.py resumes only shards made with the same tokenizer, data and flags (else refuses, or redoes them with
  --overwrite_output_dir) and records the tokenizer's absolute path, so train_generator.py works from any directory;
- a training script refuses an output directory that holds an earlier run unless it is resumed or
  --overwrite_output_dir deletes it first;
- a resume checks the checkpoint first (the model config and checkpointed components in its run_config.json, the RNG
  state file) and rewrites run_info.json only when the checks pass;
- bad arguments (typos in --config_overrides, NaN / non-positive numbers, a model folder of the wrong kind, ...) are
  one-line errors with exit status 2.

The scripts run in-process (`main(argv)`, one thread) on a tiny IDX dataset and untrained tiny models; only two
cases run a subprocess, to check the one-line stderr and the exit status of the `__main__` wrapper."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset

ROOT = Path(__file__).parents[1]
SCRIPTS = {name: str(ROOT / "examples" / f"{name}.py")
           for name in ("pretokenize", "train_tokenizer", "train_generator", "train_vae", "train_far")}
QUIET = ["--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
         "--train_batch_size", 8]
FAST_GRIDS = ["--validation_classes", 0, "--validation_images_per_class", 1, "--validation_num_inference_steps", 2,
              "--validation_diffusion_steps", 2]

pytestmark = pytest.mark.usefixtures("one_thread")

_MODULES: dict[str, object] = {}


def load_script(name: str):
    """Import an examples/ script as a module (once)."""
    if name not in _MODULES:
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"run_state_{name}", SCRIPTS[name])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def run(name: str, *args) -> None:
    """`name`'s main() in this process, then accelerate's singletons are reset for the next run."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        load_script(name).main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def usage_error(name: str, *args, capsys) -> str:
    """Run `name` expecting an argparse error: exit status 2; returns stderr."""
    with pytest.raises(SystemExit) as error:
        run(name, *args)
    assert error.value.code == 2
    return capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under `folder` with its bytes (directories as None): to show that nothing changed."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: data and untrained tiny models
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(40, seed=3)), np.arange(40) % 10)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny tokenizers (other weights), a tiny VAE, and fake folders of a generator, a FAR transformer and a
    FAR pipeline (only their config files: the scripts must refuse them before loading weights)."""
    from diffusers import AutoencoderKL

    from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig

    root = tmp_path_factory.mktemp("models")
    config = SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1, codebook_size=64)
    for seed, name in ((0, "tokenizer_a"), (1, "tokenizer_b")):
        torch.manual_seed(seed)
        SpectralTokenizer(config).save_pretrained(root / name)
    vae = load_script("train_vae").VAE_PRESETS["tiny"]
    AutoencoderKL(**vae, down_block_types=["DownEncoderBlock2D"] * 3,
                  up_block_types=["UpDecoderBlock2D"] * 3).save_pretrained(root / "vae")
    for name, config_json in (("generator", {"model_type": "spectralar"}), ("far", {"model_type": "far"})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config_json))
    (root / "far_pipeline" / "transformer").mkdir(parents=True)
    (root / "far_pipeline" / "model_index.json").write_text(json.dumps({"_class_name": "FARPipeline"}))
    return root


def pretokenize_args(tokenizer: Path, data: Path, output: Path, *extra) -> list:
    return ["--tokenizer", tokenizer, "--idx_data_dir", data, "--max_samples", 16, "--num_shards", 2, "--output_dir",
            output, *extra]


@pytest.fixture(scope="module")
def codes(models, idx_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("codes")
    run("pretokenize", *pretokenize_args(models / "tokenizer_a", idx_folder, output))
    return output


def generator_args(codes_dir: Path, output: Path, *extra) -> list:
    return ["--tokenized_dataset", codes_dir, "--preset", "tiny", "--output_dir", output, *QUIET, *extra]


@pytest.fixture(scope="module")
def generator_run(codes, tmp_path_factory) -> Path:
    """A 2-step generator run with EMA and a checkpoint after every step."""
    output = tmp_path_factory.mktemp("generator-run") / "run"
    run("train_generator", *generator_args(codes, output, "--max_train_steps", 2, "--checkpointing_steps", 1,
                                           "--use_ema"))
    return output


# ---------------------------------------------------------------------------------------------------------------
# pretokenize.py: shards are resumed only when made the same way
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change,named", [
    ({"--tokenizer": "tokenizer_b"}, "the tokenizer's weights"),
    ({"--max_samples": 12}, "max_samples 16 -> 12"),
    ({"--flip": None}, "flip False -> True"),
    ({"--num_shards": 4}, "num_shards 2 -> 4"),
    ({"--split": "test"}, "split 'train' -> 'test'"),
], ids=["tokenizer", "max_samples", "flip", "num_shards", "split"])
def test_pretokenize_refuses_shards_made_otherwise(change, named, codes, models, idx_folder):
    before = snapshot(codes)
    args = pretokenize_args(models / "tokenizer_a", idx_folder, codes)
    for flag, value in change.items():
        if value is None or flag not in args:
            args += [flag] if value is None else [flag, value]
        else:
            args[args.index(flag) + 1] = models / value if flag == "--tokenizer" else value
    with pytest.raises(ValueError) as error:
        run("pretokenize", *args)
    message = str(error.value)
    assert "other settings" in message and named in message and "--overwrite_output_dir" in message, message
    assert snapshot(codes) == before  # the shards, the data and pretokenize.json are untouched


def test_pretokenize_refuses_shards_of_unknown_origin(codes, models, idx_folder, tmp_path):
    output = tmp_path / "codes"
    shutil.copytree(codes, output)
    (output / "pretokenize_settings.json").unlink()  # shards written by an older version
    with pytest.raises(ValueError, match="without a readable pretokenize_settings.json.*--overwrite_output_dir"):
        run("pretokenize", *pretokenize_args(models / "tokenizer_a", idx_folder, output))


def test_pretokenize_overwrite_redoes_the_shards_and_records_an_absolute_tokenizer(codes, models, idx_folder,
                                                                                   tmp_path, monkeypatch):
    import datasets

    output = tmp_path / "codes"
    shutil.copytree(codes, output)
    old = datasets.load_from_disk(str(output / "data"))["codes"]
    monkeypatch.chdir(models)  # a relative --tokenizer
    run("pretokenize", *pretokenize_args("tokenizer_b", idx_folder, output, "--overwrite_output_dir"))
    info = json.loads((output / "pretokenize.json").read_text())
    assert info["tokenizer"] == str((models / "tokenizer_b").resolve()) and Path(info["tokenizer"]).is_absolute()
    new = datasets.load_from_disk(str(output / "data"))["codes"]
    assert len(new) == len(old) == 16 and new != old  # encoded again, by the other tokenizer
    settings = json.loads((output / "pretokenize_settings.json").read_text())
    assert settings["tokenizer"] == info["tokenizer"]
    # the same settings again: resumed (the finished shards are kept), not refused
    kept = (output / "shards" / "shard-00000").stat().st_mtime_ns
    run("pretokenize", *pretokenize_args("tokenizer_b", idx_folder, output))
    assert (output / "shards" / "shard-00000").stat().st_mtime_ns == kept


def test_the_tokenizer_fingerprint_survives_a_resave_but_not_other_weights(models, tmp_path):
    from spectralar_hf import SpectralTokenizer
    from spectralar_hf.training.checkpointing import model_fingerprint

    SpectralTokenizer.from_pretrained(models / "tokenizer_a").save_pretrained(tmp_path / "copy")
    assert model_fingerprint(tmp_path / "copy") == model_fingerprint(models / "tokenizer_a")
    assert model_fingerprint(models / "tokenizer_b") != model_fingerprint(models / "tokenizer_a")


def test_train_generator_runs_from_another_directory(codes, models, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run("train_generator", *generator_args(codes, tmp_path / "gen", "--max_train_steps", 1))
    tokenizer = json.loads((tmp_path / "gen" / "pipeline" / "tokenizer" / "config.json").read_text())
    assert tokenizer["codebook_size"] == 64 and tokenizer["num_channels"] == 1


def test_train_generator_resolves_an_old_relative_tokenizer_entry(codes, models, tmp_path, monkeypatch):
    """Older pretokenize.json files hold the tokenizer relative to the directory pretokenize.py ran in: it is found
    from the folders above the codes; a tokenizer that cannot be found is a clear error."""
    project = tmp_path / "project"
    shutil.copytree(codes, project / "runs" / "codes")
    shutil.copytree(models / "tokenizer_a", project / "runs" / "tokenizer")
    info_file = project / "runs" / "codes" / "pretokenize.json"
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "tokenizer": "runs/tokenizer"}))  # as written from project/
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    module = load_script("train_generator")
    args = module.parse_args(["--tokenized_dataset", str(project / "runs" / "codes"), "--output_dir", "o"])
    _, tokenizer = module.load_codes(args)
    assert Path(tokenizer).resolve() == (project / "runs" / "tokenizer").resolve()
    info_file.write_text(json.dumps({**info, "tokenizer": "runs/missing"}))
    with pytest.raises(ValueError, match="'runs/missing' recorded in .*pretokenize.json does not exist.*--tokenizer"):
        module.load_codes(args)


# ---------------------------------------------------------------------------------------------------------------
# Training scripts: one run per output directory
# ---------------------------------------------------------------------------------------------------------------


def training_args(name: str, models: Path, idx_folder: Path, codes: Path, output: Path, *extra) -> list:
    specific = {
        "train_tokenizer": ["--idx_data_dir", idx_folder, "--preset", "tiny-32", "--config_overrides",
                            '{"num_channels": 1, "codebook_size": 64}', "--max_train_samples", 8],
        "train_generator": ["--tokenized_dataset", codes, "--preset", "tiny"],
        "train_vae": ["--idx_data_dir", idx_folder, "--preset", "tiny", "--max_train_samples", 8,
                      "--scaling_samples", 8],
        "train_far": ["--vae", models / "vae", "--idx_data_dir", idx_folder, "--preset", "tiny",
                      "--max_train_samples", 8, *FAST_GRIDS],
    }[name]
    return [*specific, "--output_dir", output, *QUIET, *extra]


MODEL_FOLDER = {"train_tokenizer": "tokenizer", "train_generator": "pipeline", "train_vae": "vae",
                "train_far": "pipeline"}
TRAINING = sorted(MODEL_FOLDER)


def earlier_run(output: Path, name: str) -> None:
    """The files an earlier run of `name` leaves behind."""
    (output / "checkpoint-3").mkdir(parents=True)
    (output / "checkpoint-3" / "model.safetensors").write_bytes(b"old")
    (output / MODEL_FOLDER[name]).mkdir()
    (output / "run_info.json").write_text('{"old": true}')
    (output / "train_log.jsonl").write_text('{"step": 3, "loss": 9.0}\n')


@pytest.mark.parametrize("name", TRAINING)
def test_a_new_run_refuses_an_output_dir_holding_an_earlier_run(name, models, idx_folder, codes, tmp_path):
    output = tmp_path / "out"
    earlier_run(output, name)
    before = snapshot(output)
    with pytest.raises(ValueError) as error:
        run(name, *training_args(name, models, idx_folder, codes, output, "--max_train_steps", 1))
    message = str(error.value)
    assert "holds an earlier run" in message and "checkpoint-3" in message and "run_info.json" in message
    assert "--resume_from_checkpoint latest" in message and "--overwrite_output_dir" in message
    assert snapshot(output) == before


@pytest.mark.parametrize("name", TRAINING)
def test_overwrite_output_dir_deletes_the_earlier_run_first(name, models, idx_folder, codes, tmp_path, caplog):
    output = tmp_path / "out"
    earlier_run(output, name)
    with caplog.at_level("WARNING"):
        run(name, *training_args(name, models, idx_folder, codes, output, "--max_train_steps", 1,
                                 "--overwrite_output_dir"))
    assert "deleting the earlier run" in caplog.text and "checkpoint-3" in caplog.text
    assert not (output / "checkpoint-3").exists()
    assert [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()] == [1]
    info = json.loads((output / "run_info.json").read_text())
    assert info["args"]["overwrite_output_dir"] is True and info["run_config"]["model"]
    assert any((output / MODEL_FOLDER[name]).iterdir())  # the new model


# ---------------------------------------------------------------------------------------------------------------
# Resume: checked before anything is loaded or rewritten
# ---------------------------------------------------------------------------------------------------------------


def damage_rng(checkpoint: Path) -> None:
    path = checkpoint / "random_states_0.pkl"
    path.write_bytes(path.read_bytes()[:60])


def from_another_script(checkpoint: Path) -> None:
    record = json.loads((checkpoint / "run_config.json").read_text())
    (checkpoint / "run_config.json").write_text(json.dumps({**record, "script": "train_vae.py"}))


@pytest.mark.parametrize("damage,extra,message", [
    (None, ["--use_ema", "--config_overrides", '{"hidden_size": 32}'],
     r"another configuration \(model.hidden_size \(checkpoint 64, now 32\)"),
    (None, [], r"components.use_ema \(checkpoint True, now False\)"),  # resumed without --use_ema
    (damage_rng, ["--use_ema"], r"RNG state file .*checkpoint-2.random_states_0.pkl is corrupt"),
    (lambda c: (c / "random_states_0.pkl").unlink(), ["--use_ema"], r"no RNG state file .*random_states_0.pkl"),
    # a checkpoint of an older version (no run_config.json): the size mismatch is still one clear line
    (lambda c: (c / "run_config.json").unlink(), ["--use_ema", "--config_overrides", '{"hidden_size": 32}'],
     r"Cannot resume .*checkpoint-2: it does not fit this run \(size mismatch for"),
    (from_another_script, ["--use_ema"], r"saved by train_vae.py, not by train_generator.py"),
    (lambda c: (c / "model.safetensors").write_bytes(b"\0" * 16), ["--use_ema"],
     r"Cannot resume .*checkpoint-2: a file of it cannot be read \(SafetensorError"),
], ids=["other-config", "other-components", "corrupt-rng", "missing-rng", "legacy-size-mismatch", "other-script",
        "corrupt-weights"])
def test_resume_checks_the_checkpoint_before_rewriting_run_info(damage, extra, message, generator_run, codes,
                                                                tmp_path):
    output = tmp_path / "run"
    shutil.copytree(generator_run, output)
    if damage is not None:
        damage(output / "checkpoint-2")
    before = {name: (output / name).read_bytes() for name in ("run_info.json", "train_log.jsonl")}
    with pytest.raises(ValueError, match=message) as error:
        run("train_generator", *generator_args(codes, output, "--max_train_steps", 3, "--resume_from_checkpoint",
                                               "latest", *extra))
    assert "\n" not in str(error.value)
    assert {name: (output / name).read_bytes() for name in before} == before
    assert not (output / "checkpoint-3").exists()


def test_resume_drops_the_log_records_after_the_checkpoint(generator_run, codes, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(generator_run, output)
    run("train_generator", *generator_args(codes, output, "--max_train_steps", 3, "--checkpointing_steps", 1,
                                           "--use_ema", "--resume_from_checkpoint", "checkpoint-1",
                                           "--guidance_scale", 2.0))  # a sampling default may change
    steps = [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 of the first run is not kept next to the resumed run's step 2
    assert json.loads((output / "checkpoint-3" / "run_config.json").read_text()) == json.loads(
        (output / "checkpoint-1" / "run_config.json").read_text())


@pytest.mark.parametrize("extra,warned", [
    ([], []),  # the saving run's plan (linear, 1 warm-up step, 2 steps) and rate: an exact resume, no warning
    (["--lr_scheduler", "cosine"], ["schedule changes at step 1"]),
    (["--max_train_steps", 3, "--learning_rate", 2e-4],
     ["schedule changes at step 1", "rate 0.0002 is not used; the schedule resumed from"]),
], ids=["same-plan", "other-scheduler", "longer-and-other-rate"])
def test_resume_warns_when_the_learning_rate_plan_differs(extra, warned, generator_run, codes, tmp_path, caplog):
    output = tmp_path / "run"
    shutil.copytree(generator_run, output)
    shutil.rmtree(output / "checkpoint-2")  # resume from checkpoint-1
    plan = {"--max_train_steps": 2, "--checkpointing_steps": 1, **dict(zip(extra[::2], extra[1::2]))}
    with caplog.at_level("WARNING"):
        run("train_generator", *generator_args(codes, output, *[item for pair in plan.items() for item in pair],
                                               "--use_ema", "--resume_from_checkpoint", "latest"))
    messages = [record.getMessage() for record in caplog.records]
    schedule_warnings = [m for m in messages if "learning-rate schedule" in m or "--learning_rate:" in m]
    assert len(schedule_warnings) == len(warned), schedule_warnings
    for text in warned:
        assert any(text in message for message in schedule_warnings), (text, schedule_warnings)
    if "--learning_rate" in extra:  # what the warnings say: the new plan (linear over 3 steps) at the saved rate
        lr_after_step_2 = {r["step"]: r["lr"] for r in map(json.loads, (output / "train_log.jsonl").open())}[2]
        assert lr_after_step_2 == pytest.approx(1e-4 * (3 - 2) / (3 - 1), rel=1e-6)  # 2e-4 would give 1e-4


def test_resume_from_another_directory_keeps_both_runs_apart(generator_run, codes, tmp_path):
    """A checkpoint of another directory resumes into an empty --output_dir (its log is left alone), but not into
    one that holds a run of its own."""
    source = tmp_path / "source"
    shutil.copytree(generator_run, source)
    before = snapshot(source)
    occupied = tmp_path / "occupied"
    earlier_run(occupied, "train_generator")
    with pytest.raises(ValueError, match="belongs to another directory.*holds an earlier run of its own"):
        run("train_generator", *generator_args(codes, occupied, "--max_train_steps", 3, "--use_ema",
                                               "--resume_from_checkpoint", source / "checkpoint-1"))
    run("train_generator", *generator_args(codes, tmp_path / "new", "--max_train_steps", 3, "--use_ema",
                                           "--resume_from_checkpoint", source / "checkpoint-1"))
    assert snapshot(source) == before
    steps = [json.loads(line)["step"] for line in (tmp_path / "new" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one-line usage errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,extra,message", [
    ("train_tokenizer", ["--config_overrides", '{"codebok_size": 64}'],
     "SpectralTokenizerConfig has no field 'codebok_size' (did you mean 'codebook_size'"),
    ("train_generator", ["--config_overrides", '{"hiden_size": 64}'],
     "SpectralARConfig has no field 'hiden_size' (did you mean 'hidden_size'"),
    ("train_far", ["--config_overrides", '{"hidden_sise": 64}'],
     "FARConfig has no field 'hidden_sise' (did you mean 'hidden_size'"),
    ("train_vae", ["--vae_config", '{"latent_chanels": 8}'],
     "AutoencoderKL has no field 'latent_chanels' (did you mean 'latent_channels'"),
    ("train_generator", ["--config_overrides", '{"hidden_size": 64'], "--config_overrides is not valid JSON"),
    ("train_tokenizer", ["--config_overrides", "[1, 2]"], "--config_overrides must be a JSON object"),
    ("train_generator", ["--learning_rate", "nan"], "argument --learning_rate: expected a finite number, got 'nan'"),
    ("train_far", ["--guidance_scale", "inf"], "argument --guidance_scale: expected a finite number, got 'inf'"),
    ("train_vae", ["--kl_weight=-1e-6"], "argument --kl_weight: must be >= 0"),
    ("train_tokenizer", ["--max_train_steps", "0"], "argument --max_train_steps: must be >= 1, got '0'"),
    ("train_far", ["--train_batch_size", "-8"], "argument --train_batch_size: must be >= 1"),
    ("train_generator", ["--ema_decay", "1.0"], "argument --ema_decay: must lie in (0, 1), got '1.0'"),
    ("train_vae", ["--checkpointing_steps", "0"], "argument --checkpointing_steps: must be >= 1"),
    ("train_generator", ["--top_p", "1.5"], "--top_p must lie in (0, 1], got 1.5"),
    ("train_far", ["--lr_scheduler", "cosin"], "argument --lr_scheduler: invalid choice: 'cosin'"),
    ("train_tokenizer", ["--photo_crop_scale", "0.6", "0.1"], "--photo_crop_scale takes MIN MAX"),
    ("pretokenize", ["--batch_size", "0"], "argument --batch_size: must be >= 1, got '0'"),
    ("pretokenize", ["--num_shards", "nan"], "argument --num_shards: expected an integer, got 'nan'"),
], ids=["tokenizer-typo", "generator-typo", "far-typo", "vae-config-typo", "invalid-json", "json-not-object",
        "nan-lr", "inf-guidance", "negative-kl", "zero-steps", "negative-batch", "ema-decay-1", "zero-checkpointing",
        "top-p", "lr-scheduler-typo", "crop-scale-order", "zero-batch", "nan-shards"])
def test_bad_numbers_and_config_overrides_are_usage_errors(name, extra, message, models, idx_folder, codes, tmp_path,
                                                           capsys):
    if name == "pretokenize":
        args = pretokenize_args(models / "tokenizer_a", idx_folder, tmp_path / "o")
    else:
        args = training_args(name, models, idx_folder, codes, tmp_path / "o")
        for flag in ("--config_overrides",):  # replace the base value rather than passing the flag twice
            if flag in extra and flag in args:
                del args[args.index(flag):args.index(flag) + 2]
    err = usage_error(name, *args, *extra, capsys=capsys)
    assert message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,extra,message", [
    ("pretokenize", ["--tokenizer", "MODELS/generator"],
     "--tokenizer 'MODELS/generator' holds a SpectralAR transformer (SpectralARForCausalLM, no tokenizer), not a "
     "SpectralTokenizer folder"),
    ("pretokenize", ["--tokenizer", "MODELS/far_pipeline"],
     "holds a FARPipeline (VAE latents, no spectral tokenizer), not a SpectralTokenizer folder or a SpectralARPipeline "
     "folder"),
    ("pretokenize", ["--tokenizer", "IDX"], "holds no config.json or model_index.json"),
    ("train_generator", ["--tokenizer", "MODELS/far"], "--tokenizer 'MODELS/far' holds a FAR transformer (FARTransformer, no VAE)"),
    ("train_generator", ["--tokenizer", "MODELS/tokenizer_b"],
     "--tokenizer 'MODELS/tokenizer_b' is not the tokenizer that made the codes"),
    ("train_generator", ["--pretrained_model_name_or_path", "MODELS/tokenizer_a"],
     "holds a SpectralTokenizer, not a SpectralARForCausalLM folder"),
    ("train_vae", ["--pretrained_model_name_or_path", "MODELS/tokenizer_a"],
     "holds a SpectralTokenizer, not a diffusers AutoencoderKL folder"),
    ("train_far", ["--pretrained_model_name_or_path", "MODELS/generator"],
     "holds a SpectralAR transformer (SpectralARForCausalLM, no tokenizer), not a FARTransformer folder"),
    ("train_far", ["--validation_classes", "12"], "--validation_classes [12]: the data has 10 classes"),
    ("train_generator", ["--resume_from_checkpoint", "/nowhere/checkpoint-5"], "no complete checkpoint found"),
    ("train_vae", ["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], "pass only one of them"),
    ("train_vae", ["--vae_config", '{"block_out_channels": "64"}'], "block_out_channels must be a non-empty list"),
], ids=["pretokenize-generator", "pretokenize-far-pipeline", "pretokenize-data-folder", "generator-far-tokenizer",
        "generator-other-tokenizer", "generator-pretrained-tokenizer", "vae-pretrained-tokenizer",
        "far-pretrained-generator", "far-validation-classes", "resume-nowhere", "resume-and-overwrite",
        "vae-config-type"])
def test_wrong_folders_and_values_are_clear_errors(name, extra, message, models, idx_folder, codes, tmp_path):
    places = {"MODELS": str(models), "IDX": str(idx_folder)}

    def resolve(value: str) -> str:
        head = value.split("/")[0]
        return places[head] + value[len(head):] if head in places else value

    if name == "pretokenize":
        args = pretokenize_args(models / "tokenizer_a", idx_folder, tmp_path / "o")
        del args[:2]
    else:
        args = training_args(name, models, idx_folder, codes, tmp_path / "o")
    with pytest.raises((ValueError, SystemExit)) as error:
        run(name, *args, *map(resolve, extra))
    text = str(error.value)
    for head, place in places.items():
        text = text.replace(place, head)
    assert message in text, text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,extra,message", [
    ("pretokenize", ["--tokenizer", "MODELS/far"], "pretokenize: error: --tokenizer"),
    ("train_far", ["--idx_data_dir", "EMPTY"], "train_far.py: error: No train-images IDX file in"),
], ids=["pretokenize-far-model", "far-idx-without-files"])
def test_script_errors_are_one_line_on_stderr_with_status_2(name, extra, message, models, idx_folder, codes,
                                                            tmp_path):
    (tmp_path / "empty").mkdir()
    places = {"MODELS": str(models), "EMPTY": str(tmp_path / "empty")}
    extra = [places[v.split("/")[0]] + v[len(v.split("/")[0]):] if v.split("/")[0] in places else v for v in extra]
    if name == "pretokenize":
        args = pretokenize_args(models / "tokenizer_a", idx_folder, tmp_path / "o")[2:]
    else:
        args = training_args(name, models, idx_folder, codes, tmp_path / "o")
        del args[args.index("--idx_data_dir"):args.index("--idx_data_dir") + 2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, SCRIPTS[name], *map(str, args), *extra], capture_output=True, text=True,
                            env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), result.stderr
