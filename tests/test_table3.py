"""SpectralAR Table 3 on tiny random models: the Trunc.k rows of `evaluate_pipeline` / `spectralar-hf evaluate
pipeline --trunc` (the last k tokens discarded) and `benchmarks/table3_superres.py` (super-resolution against a
ground truth). The FID network is a tiny TorchScript stand-in."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images, write_idx_dataset
from test_evaluate_cli import StandIn

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.cli import main as cli_main
from spectralar_hf.evaluation import (
    InceptionFeatureExtractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    psnr,
)
from spectralar_hf.evaluation.report import check_trunc, evaluate_pipeline, format_truncation_table

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "table3_superres.py"
NUM_CLASSES = 3
STAND_IN_INPUT = 32  # the stand-in feature network reads 32 px (Inception reads 299)


def load_script():
    spec = importlib.util.spec_from_file_location("table3_superres", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("table3_superres", module)
    spec.loader.exec_module(module)
    return module


def tiny_pipeline(tokens_per_step: int = 1) -> SpectralARPipeline:
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).eval()
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset(
        "tiny", num_classes=NUM_CLASSES, tokens_per_step=tokens_per_step)).eval()
    pipe = SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return InceptionFeatureExtractor(network=torch.jit.script(StandIn().eval()), input_size=STAND_IN_INPUT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pipe):
    root = tmp_path_factory.mktemp("table3")
    torch.manual_seed(0)
    torch.jit.script(StandIn().eval()).save(str(root / "standin.pt"))
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(30, seed=1)), np.arange(30) % NUM_CLASSES)
    pipe.save_pretrained(root / "pipeline")
    return root


def reference_images(count: int = 8) -> torch.Tensor:
    blobs = torch.from_numpy(np.stack(blob_images(count, seed=2, size=32))).float()
    return (blobs / 127.5 - 1).unsqueeze(1)  # (N, 1, 32, 32) in [-1, 1]


# ---------------------------------------------------------------------------------------------------------------
# Trunc.k rows
# ---------------------------------------------------------------------------------------------------------------


def test_trunc_rows_are_gfid_of_the_first_n_minus_k_tokens(pipe, extractor):
    """Row Trunc.k is the FID of the samples decoded from their first N - k codes, computed here directly from one
    full run with the report's seed; Trunc.0 is the report's gFID."""
    reference = reference_images()
    report = evaluate_pipeline(pipe, reference, samples_per_class=2, extractor=extractor, trunc=[0, 5, 12],
                               seed=3)
    total = pipe.transformer.config.num_image_tokens
    rows = report["truncation"]
    assert [row["label"] for row in rows] == ["Trunc.0", "Trunc.5", "Trunc.12"]
    assert [row["trunc"] for row in rows] == [0, 5, 12]
    assert [row["num_tokens"] for row in rows] == [total, total - 5, total - 12]
    assert rows[0]["gfid"] == report["gfid"]

    class_ids = [c for c in range(NUM_CLASSES) for _ in range(2)]
    full = pipe(class_ids, generator=torch.Generator().manual_seed(3), output_type="pt")  # one batch: seed + 0
    real = feature_statistics(extract_features(reference, extractor, progress=False))
    for row in rows:
        images = pipe.decode(full.codes, num_tokens=total - row["trunc"], output_type="pt").float() * 2 - 1
        fake = feature_statistics(extract_features(images, extractor, progress=False))
        assert row["gfid"] == pytest.approx(frechet_distance(*fake, *real), rel=1e-4, abs=1e-6)
    assert len({round(row["gfid"], 6) for row in rows}) == 3  # truncation changes the samples


def test_evaluate_pipeline_refuses_the_old_truncation_argument(pipe, extractor):
    """The former `truncation` (tokens kept) is an error with its `trunc` translation, never a silent reading."""
    reference = reference_images()
    with pytest.raises(TypeError, match=r"`truncation` \(tokens kept\) was replaced by `trunc`.*N = 16"):
        evaluate_pipeline(pipe, reference, 2, extractor=extractor, truncation=[8])
    with pytest.raises(TypeError, match="positional"):  # the old positional slot is keyword-only now
        evaluate_pipeline(pipe, reference, 2, None, extractor, [8])


def test_check_trunc_errors_and_values():
    assert check_trunc([4, 0, 4], 16) == [4, 0]  # duplicates dropped, order kept
    assert check_trunc(np.array([8, 12]), 16, 4) == [8, 12]
    with pytest.raises(ValueError, match=r"trunc \[16\] would leave no generation step.*k must lie in \[0, 15\]"):
        check_trunc([16], 16)
    with pytest.raises(ValueError, match=r"\[20\].*\[0, 12\]"):
        check_trunc([20], 16, 4)
    with pytest.raises(ValueError, match=r"\[-1\] below 0"):
        check_trunc([-1], 16)
    with pytest.raises(ValueError, match=r"\[2, 5\] would stop mid-step.*4 tokens per step.*one of \[0, 4, 8, 12\]"):
        check_trunc([2, 4, 5], 16, 4)
    with pytest.raises(TypeError, match="ints"):
        check_trunc([True], 16)
    with pytest.raises(TypeError, match="ints"):
        check_trunc([2.0], 16)


def test_evaluate_pipeline_checks_trunc_against_the_steps(extractor):
    """With 4 tokens per step, k must keep whole steps: refused before anything is generated."""
    with pytest.raises(ValueError, match="mid-step"):
        evaluate_pipeline(tiny_pipeline(tokens_per_step=4), reference_images(), 2, extractor=extractor, trunc=[6])


def test_format_truncation_table():
    rows = [{"label": "Trunc.0", "trunc": 0, "num_tokens": 32, "gfid": 99.81},
            {"label": "Trunc.8", "trunc": 8, "num_tokens": 24, "gfid": 101.5}]
    lines = format_truncation_table(rows).splitlines()
    assert lines[0] == "| row | tokens discarded (k) | tokens kept (N - k) | gFID |"
    assert lines[2:] == ["| Trunc.0 | 0 | 32 | 99.810 |", "| Trunc.8 | 8 | 24 | 101.500 |"]


def test_cli_old_truncation_flag_is_an_error_with_the_translation(setup, capsys):
    """`--truncation M` (tokens kept) exits 2 with the `--trunc` values meaning the same: exact when the generator
    config can be read, as a formula otherwise."""
    for checkpoint, expected in ((setup / "pipeline", "--truncation 12 4 is --trunc 4 12 for this 16-token"),
                                 (setup / "missing", "--truncation 12 4 is --trunc N-12 N-4 for a generator of N")):
        status = cli_main(["evaluate", "pipeline", str(checkpoint), "--idx-data-dir", str(setup / "idx"),
                           "--truncation", "12", "4"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and expected in err, err


# ---------------------------------------------------------------------------------------------------------------
# Super-resolution (benchmarks/table3_superres.py)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["stride", "patch"])
def test_split_and_merge_are_super_resolve_geometry(method):
    script = load_script()
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    parts = script.split(images, 2, method)
    assert parts.shape == (8, 1, 4, 4)
    expected = [images[b, :, i::2, j::2] if method == "stride" else images[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                for b in range(2) for i in range(2) for j in range(2)]
    assert torch.equal(parts, torch.stack(expected))
    assert torch.equal(script.merge(parts, 2, method), images)


@pytest.mark.parametrize("method", ["stride", "patch"])
def test_split_sr_feeds_super_resolve_the_sub_images_of_the_input(pipe, method, monkeypatch):
    """super_resolve gets the mosaic whose sub-images are the input's (bicubic x scale), keeps the omega <= L / scale
    prefix, and its completed sub-images come back area-downsampled and reassembled."""
    script = load_script()
    low = reference_images(2)[:, :, ::2, ::2].contiguous()  # (2, 1, 16, 16)
    calls = []
    fake = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))

    def recording_super_resolve(image, **kwargs):
        calls.append((image.clone(), kwargs))
        return type("Output", (), {"images": fake})()

    monkeypatch.setattr(pipe, "super_resolve", recording_super_resolve)
    result = script.spectral_split_sr(pipe, low, [0, 1], 2, method, torch.Generator().manual_seed(0))
    (mosaic, kwargs), = calls
    assert kwargs["scale"] == 2 and kwargs["method"] == method and kwargs["class_labels"] == [0, 1]
    assert kwargs["keep_tokens"] == sum(w <= 8 for w in pipe.tokenizer.config.omega)
    expected = script.upsample(script.split(low, 2, method), 2)
    torch.testing.assert_close(script.split(mosaic * 2 - 1, 2, method), expected, atol=1e-5, rtol=0)
    completed = script.split(fake * 2 - 1, 2, method)  # (8, 1, 32, 32)
    torch.testing.assert_close(result, script.merge(F.avg_pool2d(completed, 2), 2, method))


def test_table3_superres_quick_table(setup, tmp_path):
    """`--quick` on a tiny pipeline: the table's rows and columns, and the bicubic baseline's PSNR equal to a direct
    computation on the same held-out images."""
    script = load_script()
    output = tmp_path / "table3_superres.md"
    rows = script.main(["--pipeline", str(setup / "pipeline"), "--idx_data_dir", str(setup / "idx"), "--quick",
                        "--inception", str(setup / "standin.pt"), "--output", str(output)])
    assert [row["method"] for row in rows] == ["upsample", "stride", "patch", "whole", "stride_geometry",
                                               "patch_geometry", "reconstruction"]
    omega = SpectralTokenizerConfig.from_preset("tiny-32").omega
    keep = {"stride": sum(w <= 8 for w in omega), "patch": sum(w <= 8 for w in omega),
            "whole": sum(w <= 16 for w in omega)}
    assert {row["method"]: row["kept"] for row in rows if row["kept"] is not None} == keep
    assert all(row["completed"] == 16 - row["kept"] for row in rows if row["kept"] is not None)
    assert all(np.isfinite(row["fid"]) and np.isfinite(row["psnr"]) for row in rows)

    from spectralar_hf.evaluation.report import load_evaluation_images

    truth, _ = load_evaluation_images(32, 1, idx_data_dir=str(setup / "idx"), split="test",
                                      num_images=script.QUICK_NUM_IMAGES, seed=0)
    bicubic = F.interpolate(F.avg_pool2d(truth, 2), size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert rows[0]["psnr"] == pytest.approx(float(psnr(bicubic, truth)), abs=1e-9)

    text = output.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(script.HEADER) + " |" and len(table) == 2 + 7
    assert table[2].startswith(f"| Upsample (bicubic; the paper's baseline) | {rows[0]['psnr']:.2f} |")
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [script.LABELS[row["method"]] for row in rows]
    assert "command: `python benchmarks/table3_superres.py --pipeline" in text and "--quick" in text


def test_trunc_of_a_pipeline_without_tokens_is_a_clear_error():
    """FAR's generator has no token sequence: Trunc.k rows are refused before anything is generated (and an
    evaluation without trunc does not ask the generator for a token count)."""
    far_like = type("Pipe", (), {"transformer": type("Generator", (), {"config": type(
        "Config", (), {"num_classes": 2, "tokens_per_step": 1})()})()})()
    with pytest.raises(ValueError, match="applies to SpectralAR pipelines"):
        evaluate_pipeline(far_like, torch.zeros(4, 3, 8, 8), 2, trunc=[1])
