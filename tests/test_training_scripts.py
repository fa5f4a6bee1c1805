"""The accelerate training scripts on tiny generated data: learning, exact resume after SIGKILL, pretokenize
output, a real 2-process launch, and clear errors for bad arguments.

The scripts run in subprocesses on one thread; in the resume tests only the run that is killed is a subprocess, the
uninterrupted and the resumed runs are in-process calls of `main()` (also on one thread, so that they match the
subprocess bit for bit), which saves the imports of a process start per run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import blob_images, write_idx_dataset
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]
TOKENIZER_SCRIPT = str(ROOT / "examples" / "train_tokenizer.py")
PRETOKENIZE_SCRIPT = str(ROOT / "examples" / "pretokenize.py")
GENERATOR_SCRIPT = str(ROOT / "examples" / "train_generator.py")
TINY_TOKENIZER = ["--preset", "tiny-32", "--config_overrides", '{"num_channels": 1, "codebook_size": 64}']
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SUBPROCESS_TIMEOUT_S = 600


def run(script: str, *args, check: bool = True, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [script, *map(str, args)]
    # A hung run (e.g. a distributed rendezvous that never completes) fails the test instead of stalling the suite.
    # The whole process group is killed: a launcher's workers would otherwise keep the output pipes open.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command)} did not finish in {SUBPROCESS_TIMEOUT_S} s:\n{stderr[-3000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def run_in_process(script: str, *args) -> None:
    """`script`'s main() in this process on one thread, then accelerate's singletons are reset for the next run."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_script(script).main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    for label in ("round", "wide"):
        (root / label).mkdir()
        for index, image in enumerate(blob_images(12, seed=len(label))):
            Image.fromarray(image).save(root / label / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    """A tiny dataset in the (Fashion-)MNIST IDX format."""
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(40, seed=3)), np.arange(40) % 10)
    return root


def tokenizer_args(data: Path, output: Path, *extra) -> list:
    return ["--train_data_dir", data, *TINY_TOKENIZER, "--output_dir", output, "--train_batch_size", 8,
            "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 2, *extra]


@pytest.fixture(scope="module")
def trained_tokenizer(image_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tokenizer-run")
    # 8 images, batch 8: every step sees the same fixed batch
    run(TOKENIZER_SCRIPT, *tokenizer_args(image_folder, output, "--max_train_steps", 40, "--learning_rate", 3e-3,
                                          "--max_train_samples", 8, "--checkpointing_steps", 1000, "--use_ema"))
    return output


def test_tokenizer_script_learns_on_a_fixed_batch(trained_tokenizer):
    history = losses(trained_tokenizer)
    assert all(np.isfinite(list(history.values())))
    first, last = np.mean([history[s] for s in (1, 2, 3)]), np.mean([history[s] for s in (38, 39, 40)])
    assert last < 0.5 * first, history
    assert (trained_tokenizer / "tokenizer" / "model.safetensors").exists()
    assert list((trained_tokenizer / "samples").glob("reconstructions-*.png"))


def kill_after_checkpoint(command_args: list, checkpoint: Path, script: str) -> None:
    """Run `script`, SIGKILL it once `checkpoint` exists, then drop everything it wrote after that checkpoint, so
    that `--resume_from_checkpoint latest` really starts there."""
    process = subprocess.Popen([sys.executable, script, *map(str, command_args)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert checkpoint.exists(), f"the run ended before writing its checkpoint:\n{stderr[-3000:]}"
    step = int(checkpoint.name.split("-")[1])
    for path in checkpoint.parent.iterdir():
        later = path.name.startswith("checkpoint-") and int(path.name.split("-")[1]) > step
        if later or path.name in ("tokenizer", "pipeline"):
            shutil.rmtree(path)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


# 24 images, batch 8: 3 batches an epoch. Without accumulation the checkpoint at step 4 is one batch into the second
# epoch. With accumulation 2 accelerate also steps at each epoch end (2 steps an epoch), so step 3 is 5 batches in,
# not 3 * 2; random crop + flip and the GAN (from step 2, so both optimizers step in one accumulation) are on.
@pytest.mark.same_machine
@pytest.mark.parametrize("steps,checkpoint,extra", [
    (8, 4, ["--discriminator_start", 3]),
    (6, 3, ["--discriminator_start", 2, "--gradient_accumulation_steps", 2, "--random_flip", "--random_crop"]),
], ids=["accumulation-1", "accumulation-2-augmented"])
def test_tokenizer_script_resume_after_sigkill_is_exact(image_folder, tmp_path, steps, checkpoint, extra):
    common = ["--max_train_steps", steps, "--checkpointing_steps", checkpoint, "--use_ema", "--gan_weight", 0.1,
              "--lecam_weight", 0.001, "--discriminator_channels", 16, "--discriminator_stages", 2, *extra]
    run_in_process(TOKENIZER_SCRIPT, *tokenizer_args(image_folder, tmp_path / "straight", *common))
    interrupted = tokenizer_args(image_folder, tmp_path / "killed", *common)
    kill_after_checkpoint(interrupted, tmp_path / "killed" / f"checkpoint-{checkpoint}", TOKENIZER_SCRIPT)
    run_in_process(TOKENIZER_SCRIPT, *interrupted, "--resume_from_checkpoint", "latest")
    assert_same_weights(tmp_path / "straight" / "tokenizer" / "model.safetensors",
                        tmp_path / "killed" / "tokenizer" / "model.safetensors")
    assert "discriminator_loss" in json.loads((tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def codes_dir(trained_tokenizer, image_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("codes")
    run(PRETOKENIZE_SCRIPT, "--tokenizer", trained_tokenizer / "tokenizer", "--train_data_dir", image_folder,
        "--flip", "--num_shards", 3, "--batch_size", 5, "--output_dir", output)
    return output


def test_pretokenize_output_shape_labels_and_resume(codes_dir, trained_tokenizer, image_folder):
    data = datasets.load_from_disk(str(codes_dir / "data"))
    assert len(data) == 2 * 24  # 24 images and their mirrors
    assert data.features["label"].names == ["round", "wide"]
    assert sorted(data["label"]) == [0] * 24 + [1] * 24
    assert sum(data["flipped"]) == 24
    codes = np.array(data["codes"])
    assert codes.shape == (48, 16) and codes.min() >= 0 and codes.max() < 64
    # the codes are the tokenizer's encoding of the images
    from spectralar_hf import SpectralTokenizer
    from spectralar_hf.training.data import ImageTransform

    tokenizer = SpectralTokenizer.from_pretrained(trained_tokenizer / "tokenizer").eval()
    source = datasets.load_dataset("imagefolder", data_dir=str(image_folder))["train"]
    with torch.no_grad():
        expected = tokenizer.encode(ImageTransform(32, 1)(source[0]["image"]).unsqueeze(0)).codes[0].tolist()
    assert expected in data["codes"]
    # resumable: finished shards are kept, a missing one is redone, the result is the same
    kept = (codes_dir / "shards" / "shard-00000").stat().st_mtime_ns
    import shutil

    shutil.rmtree(codes_dir / "shards" / "shard-00002")
    run(PRETOKENIZE_SCRIPT, "--tokenizer", trained_tokenizer / "tokenizer", "--train_data_dir", image_folder,
        "--flip", "--num_shards", 3, "--batch_size", 5, "--output_dir", codes_dir)
    assert (codes_dir / "shards" / "shard-00000").stat().st_mtime_ns == kept
    again = datasets.load_from_disk(str(codes_dir / "data"))
    assert again["codes"] == data["codes"] and again["label"] == data["label"]


def test_pretokenize_with_worker_processes_gives_the_same_codes(codes_dir, trained_tokenizer, image_folder,
                                                                 tmp_path):
    """--dataloader_num_workers 2: images decoded and resized in two worker processes, encoded in the main one; the
    dataset (codes, labels, mirror flags, order) equals the one of the run without workers."""
    output = tmp_path / "codes-workers"
    run(PRETOKENIZE_SCRIPT, "--tokenizer", trained_tokenizer / "tokenizer", "--train_data_dir", image_folder,
        "--flip", "--num_shards", 3, "--batch_size", 5, "--dataloader_num_workers", 2, "--output_dir", output)
    expected = datasets.load_from_disk(str(codes_dir / "data"))
    data = datasets.load_from_disk(str(output / "data"))
    assert data.features == expected.features
    for column in ("codes", "label", "flipped"):
        assert data[column] == expected[column], column
    # the batch order within a shard: each batch's images, then their mirrors
    assert data["flipped"][:10] == [False] * 5 + [True] * 5


def generator_args(codes: Path, output: Path, *extra) -> list:
    return ["--tokenized_dataset", codes, "--preset", "tiny", "--output_dir", output, "--train_batch_size", 8,
            "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 2, *extra]


def test_generator_script_learns_saves_a_pipeline(codes_dir, tmp_path):
    output = tmp_path / "gen"
    run(GENERATOR_SCRIPT, *generator_args(codes_dir, output, "--max_train_steps", 40, "--learning_rate", 3e-3,
                                          "--checkpointing_steps", 1000, "--guidance_scale", 1.5, "--top_k", 20))
    history = losses(output)
    assert np.mean([history[s] for s in (38, 39, 40)]) < np.mean([history[s] for s in (1, 2, 3)])
    from spectralar_hf import SpectralARPipeline

    pipe = SpectralARPipeline.from_pretrained(output / "pipeline")
    assert pipe.transformer.config.id2label == {0: "round", 1: "wide"}
    assert pipe.transformer.generation_config.guidance_scale == 1.5
    assert len(pipe(["wide", "round"]).images) == 2
    assert list((output / "samples").glob("samples-*.png"))


# 48 sequences. Batch 8: 6 batches an epoch, the checkpoint at step 4 is in the middle of the first. Batch 16 with
# accumulation 2: 3 batches and (with the step at the epoch end) 2 steps an epoch, step 3 is 5 batches in, not 3 * 2.
@pytest.mark.same_machine
@pytest.mark.parametrize("steps,checkpoint,extra", [
    (8, 4, []),
    (6, 3, ["--train_batch_size", 16, "--gradient_accumulation_steps", 2]),
], ids=["accumulation-1", "accumulation-2"])
def test_generator_script_resume_after_sigkill_is_exact(codes_dir, tmp_path, steps, checkpoint, extra):
    common = ["--max_train_steps", steps, "--checkpointing_steps", checkpoint, "--use_ema", *extra]
    run_in_process(GENERATOR_SCRIPT, *generator_args(codes_dir, tmp_path / "straight", *common))
    interrupted = generator_args(codes_dir, tmp_path / "killed", *common)
    kill_after_checkpoint(interrupted, tmp_path / "killed" / f"checkpoint-{checkpoint}", GENERATOR_SCRIPT)
    run_in_process(GENERATOR_SCRIPT, *interrupted, "--resume_from_checkpoint", "latest")
    assert_same_weights(tmp_path / "straight" / "pipeline" / "transformer" / "model.safetensors",
                        tmp_path / "killed" / "pipeline" / "transformer" / "model.safetensors")


LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_two_process_launch_on_cpu(idx_folder, codes_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1 really starts 2 ranks (gloo)."""
    env_launcher = [sys.executable, *LAUNCH]
    os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        ENV["ACCELERATE_USE_CPU"] = "1"
        run(TOKENIZER_SCRIPT, "--idx_data_dir", idx_folder, *TINY_TOKENIZER, "--output_dir", tmp_path / "tok",
            "--train_batch_size", 4, "--max_train_steps", 4, "--report_to", "none", "--checkpointing_steps", 2,
            launcher=env_launcher)
        run(GENERATOR_SCRIPT, *generator_args(codes_dir, tmp_path / "gen", "--max_train_steps", 4,
                                              "--checkpointing_steps", 2), launcher=env_launcher)
    finally:
        ENV.pop("ACCELERATE_USE_CPU", None)
        os.environ.pop("ACCELERATE_USE_CPU", None)
    for name in ("tok", "gen"):
        info = json.loads((tmp_path / name / "run_info.json").read_text())
        assert info["num_processes"] == 2
        assert (tmp_path / name / "checkpoint-4").is_dir()
    assert (tmp_path / "tok" / "tokenizer" / "model.safetensors").exists()
    assert (tmp_path / "gen" / "pipeline" / "model_index.json").exists()


def load_script(path: str):
    """Import an examples/ script as a module (to call its main() in-process, fast)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "script,args,message",
    [
        (TOKENIZER_SCRIPT, ["--train_data_dir", "/nonexistent", "--output_dir", "TMP/o"], "does not exist"),
        (TOKENIZER_SCRIPT, ["--train_data_dir", "EMPTY", "--output_dir", "TMP/o", *TINY_TOKENIZER],
         "contains no images"),
        (TOKENIZER_SCRIPT, ["--train_data_dir", "IMAGES", "--output_dir", "TMP/o", "--preset", "tiny-32",
                            "--config_overrides", '{"image_size": 30}'], "not divisible by patch_size"),
        (TOKENIZER_SCRIPT, ["--train_data_dir", "IMAGES", "--output_dir", "TMP/o", *TINY_TOKENIZER,
                            "--resume_from_checkpoint", "latest", "--report_to", "none", "--train_batch_size", "8"],
         "no complete checkpoint"),
        (TOKENIZER_SCRIPT, ["--output_dir", "TMP/o"], "exactly one data source"),
        (GENERATOR_SCRIPT, ["--tokenized_dataset", "/nonexistent", "--output_dir", "TMP/o"], "pretokenize"),
        (GENERATOR_SCRIPT, ["--tokenized_dataset", "CODES", "--output_dir", "TMP/o", "--preset", "tiny",
                            "--resume_from_checkpoint", "latest", "--report_to", "none", "--train_batch_size", "8"],
         "no complete checkpoint"),
        (PRETOKENIZE_SCRIPT, ["--tokenizer", "/nonexistent", "--train_data_dir", "IMAGES", "--output_dir",
                              "TMP/o"], "does not exist"),
    ],
)
def test_bad_arguments_give_clear_errors(script, args, message, image_folder, codes_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    places = {"TMP": str(tmp_path), "EMPTY": str(tmp_path / "empty"), "IMAGES": str(image_folder),
              "CODES": str(codes_dir)}
    args = [places.get(a.split("/")[0], a.split("/")[0]) + a[len(a.split("/")[0]):] if a.split("/")[0] in places
            else a for a in args]
    with pytest.raises((SystemExit, ValueError)) as error:  # argparse exits with 2; the others raise ValueError
        load_script(script).main(args)
    if error.type is SystemExit:
        assert error.value.code == 2 and message in capsys.readouterr().err
    else:
        assert message in str(error.value)


def test_script_errors_are_one_line_with_status_2(tmp_path):
    result = run(TOKENIZER_SCRIPT, "--train_data_dir", tmp_path, "--output_dir", tmp_path / "o", *TINY_TOKENIZER,
                 check=False)
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert result.returncode == 2 and len(lines) == 1 and "contains no images" in lines[0], result.stderr


def test_generator_script_top_k_zero_switches_off_a_saved_top_k(tmp_path):
    """--top_k 0 saves 0 (no top-k, transformers' convention) over a fine-tuned model's saved top-k; < 0 is refused."""
    from spectralar_hf import SpectralARConfig, SpectralARForCausalLM

    script = load_script(GENERATOR_SCRIPT)
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny"))
    model.generation_config.top_k = 20
    script.set_sampling_defaults(model, script.parse_args(["--tokenized_dataset", str(tmp_path), "--output_dir", "o",
                                                            "--top_k", "0"]))
    assert model.generation_config.top_k == 0  # sample(top_k=0) == no filtering: tests/test_bad_input_api.py
    with pytest.raises(SystemExit):
        script.parse_args(["--tokenized_dataset", str(tmp_path), "--output_dir", "o", "--top_k", "-1"])
