"""`spectralar-hf evaluate`: JSON reports for tokenizers and pipelines (with a stand-in FID network), errors."""

import json

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from torch import nn

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.cli import main
from spectralar_hf.evaluation.report import generate_images


class StandIn(nn.Module):
    """A tiny TorchScript stand-in for Inception: (N, 3, H, W) -> (N, 6) features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    torch.jit.script(StandIn().eval()).save(str(root / "standin.pt"))
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(30, seed=1)), np.arange(30) % 3)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1))
    tokenizer.save_pretrained(root / "tokenizer")
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3))
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(root / "pipeline")
    return root


def run(capsys, *args):
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr()


def test_evaluate_tokenizer_report(setup, capsys):
    report_path, plot = setup / "tok.json", setup / "tok.png"
    status, out = run(capsys, "evaluate", "tokenizer", setup / "tokenizer", "--idx-data-dir", setup / "idx",
                      "--num-images", 12, "--prefixes", 1, 4, 16, "--fid", "--inception", setup / "standin.pt",
                      "--report", report_path, "--plot", plot)
    assert status == 0, out.err
    report = json.loads(report_path.read_text())
    assert report["num_images"] == 12 and {"psnr", "ssim", "rfid"} <= set(report)
    assert [row["num_tokens"] for row in report["prefixes"]] == [1, 4, 16]
    assert [row["omega"] for row in report["prefixes"]] == [1, 4, 32]
    assert report["prefixes"][-1]["psnr_full"] == pytest.approx(report["psnr"], abs=1e-4)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_pipeline_report_is_deterministic(setup, capsys):
    reports = []
    for name in ("a", "b"):
        status, out = run(capsys, "evaluate", "pipeline", setup / "pipeline", "--idx-data-dir", setup / "idx",
                          "--num-images", 9, "--samples-per-class", 3, "--trunc", 0, 4, 8, "--floor-split", "train",
                          "--knn-split", "train", "--knn-images", 30, "--inception", setup / "standin.pt", "--report", setup / f"{name}.json",
                          "--plot", setup / f"{name}.png")
        assert status == 0, out.err
        reports.append(json.loads((setup / f"{name}.json").read_text()))
    first, second = reports
    assert first["num_samples"] == 9 and first["classes"] == [0, 1, 2]
    assert {"gfid", "precision", "recall", "fid_floor"} <= set(first)
    assert 0 <= first["knn_accuracy"] <= 1 and 0 <= first["knn_accuracy_real"] <= 1
    assert [row["label"] for row in first["truncation"]] == ["Trunc.0", "Trunc.4", "Trunc.8"]
    assert [row["num_tokens"] for row in first["truncation"]] == [16, 12, 8]  # N - k of the 16-token generator
    assert first["truncation"][0]["gfid"] == first["gfid"]  # Trunc.0 is the full samples
    assert "| row | tokens discarded (k) | tokens kept (N - k) | gFID |" in out.out
    assert (setup / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first["gfid"] == second["gfid"] and first["truncation"] == second["truncation"]


def test_truncated_samples_are_prefixes_of_the_full_ones(setup, monkeypatch):
    """The path of `evaluate pipeline --trunc N-k`: `generate_images(..., num_tokens=k)` with the report's seed
    must sample exactly the first k codes of the full run and decode exactly those (what the decoder receives is
    recorded, so a run that samples other codes or decodes something else fails)."""
    pipe = SpectralARPipeline.from_pretrained(setup / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    decoded = []
    decode = pipe.tokenizer.decode

    def recording_decode(codes, *args, **kwargs):
        decoded.append((codes.clone(), args, kwargs))
        return decode(codes, *args, **kwargs)

    monkeypatch.setattr(pipe.tokenizer, "decode", recording_decode)

    def run_report_path(**sampling):
        decoded.clear()
        images = generate_images(pipe, class_ids, batch_size=3, seed=5, **sampling)  # batches of 3 and 2
        assert all(not args and not kwargs for _, args, kwargs in decoded)  # whole code rows are decoded
        return images, torch.cat([codes for codes, _, _ in decoded])

    class_ids = [0, 1, 2, 0, 1]
    full, full_codes = run_report_path()
    again, again_codes = run_report_path()
    assert full.shape == (5, 1, 32, 32) and full_codes.shape == (5, 16)
    assert torch.equal(full, again) and torch.equal(full_codes, again_codes)
    for k in (1, 4, 9):
        truncated, codes = run_report_path(num_tokens=k)
        assert torch.equal(codes, full_codes[:, :k]), f"the {k}-token run did not sample the full run's prefix"
        reference = pipe.decode(full_codes, num_tokens=k, output_type="pt").float() * 2 - 1
        torch.testing.assert_close(truncated, reference)
        assert not torch.allclose(truncated, full, atol=1e-3)  # a k-prefix is not the full image


@pytest.mark.parametrize(
    "args,message",
    [
        (("tokenizer", "TOK", "--idx-data-dir", "/nonexistent"), "is not a directory"),
        (("tokenizer", "TOK"), "give exactly one of"),
        (("pipeline", "PIPE", "--idx-data-dir", "IDX", "--inception", "/nonexistent.pt"), "does not exist"),
        (("pipeline", "TOK", "--idx-data-dir", "IDX"), "not a pipeline directory"),
        (("tokenizer",), "needs a checkpoint directory"),
    ],
)
def test_evaluate_errors(setup, capsys, args, message):
    places = {"TOK": setup / "tokenizer", "PIPE": setup / "pipeline", "IDX": setup / "idx"}
    status, out = run(capsys, "evaluate", *[places.get(a, a) for a in args], "--report", setup / "x.json")
    lines = [line for line in out.err.strip().splitlines() if line]
    assert status == 2 and len(lines) == 1 and message in lines[0], out.err
