"""The `spectralar-hf` command: valid PNGs from a real subprocess, one-line errors with exit status 2."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.cli import main


def run_subprocess(*args):
    return subprocess.run([sys.executable, "-m", "spectralar_hf.cli", *args], capture_output=True, text=True)


def run(capsys, *args):
    """The CLI in-process (fast): exit status, stdout, stderr."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(path)
    return path


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    names = dict(enumerate(["cat", "dog, puppy", "bird", "fish", "frog", "horse", "ship", "truck", "car", "plane"]))
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32"))
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", id2label=names))
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(path)
    return path


def assert_png(path: Path, min_width: int, min_height: int) -> None:
    image = Image.open(path)
    image.verify()
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.width >= min_width and image.height >= min_height


def test_reconstruct_subprocess_writes_a_strip(checkpoint, photo, tmp_path):
    output = tmp_path / "strip.png"
    result = run_subprocess("reconstruct", checkpoint, photo, "--prefixes", "1", "4", "16", "--output", output)
    assert result.returncode == 0, result.stderr
    assert_png(output, 3 * 96, 2 * 96)  # 3 prefixes x (low-pass, decoded) cells of >= 96 px
    assert "wrote" in result.stdout and result.stdout.count(" dB") == 6


def test_generate_subprocess_writes_grid_and_strip(pipeline_dir, tmp_path, capsys):
    grid, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    args = ["generate", pipeline_dir, "--classes", "0", "puppy", "--num-per-class", "3", "--seed", "1",
            "--guidance-scale", "2.0", "--top-k", "50"]
    result = run_subprocess(*map(str, args), "--output", str(grid), "--strip", str(strip))
    assert result.returncode == 0, result.stderr
    assert "classes [0, 1]" in result.stdout
    assert_png(grid, 3 * 96, 2 * 96)
    assert_png(strip, 96, 2 * 96)
    again = tmp_path / "again.png"
    assert run(capsys, *args, "--output", again)[0] == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(grid)))  # same seed, same grid


def test_info(checkpoint, pipeline_dir, capsys):
    status, out, _ = run(capsys, "info", checkpoint)
    assert status == 0 and "omega: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17, 22, 27, 32]" in out and "N = 16" in out
    status, out, _ = run(capsys, "info", pipeline_dir)
    assert status == 0 and "1=dog, puppy" in out and "16 tokens in 16 steps of 1" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (("info", "/nonexistent/checkpoint"), "does not exist"),
        (("reconstruct", "{checkpoint}", "/nonexistent.png"), "does not exist"),
        (("reconstruct", "{checkpoint}", "{photo}", "--prefixes", "0", "17"), "outside [1, 16]"),
        (("reconstruct", "{checkpoint}", "{checkpoint}/config.json"), "cannot read image"),
        (("info", "{photo_dir}"), "not a spectralar_hf checkpoint"),
        (("generate", "{pipeline}", "--classes", "kitten"), "not a class of this model"),
        (("generate", "{pipeline}", "--classes", "12"), "class id out of range"),
        (("generate", "{pipeline}", "--classes", "1", "--num-tokens", "17"), "num_tokens must be a multiple"),
        (("generate", "{pipeline}", "--classes", "1", "--num-per-class", "0"), "argument --num-per-class: must be >= 1"),
        (("generate", "{checkpoint}", "--classes", "1"), "not a pipeline directory"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(checkpoint, photo, pipeline_dir, tmp_path, capsys, args, message):
    args = [a.format(checkpoint=checkpoint, photo=photo, photo_dir=photo.parent, pipeline=pipeline_dir) for a in args]
    if args[0] == "generate":
        args += ["--output", str(tmp_path / "x.png")]
    status, _, err = run(capsys, *args)
    lines = [line for line in err.strip().splitlines() if line]
    assert status == 2 and len(lines) == 1 and message in lines[0], err


def test_unknown_command_exits_2(capsys):
    assert run(capsys, "frobnicate")[0] == 2


def test_model_card_template_command_prints_model_card_md(capsys):
    status, out, _ = run(capsys, "model-card", "--template")
    assert status == 0 and out == (Path(__file__).parents[1] / "MODEL_CARD.md").read_text()
