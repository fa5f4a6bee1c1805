"""benchmarks/table4_ablation.py: the four Table 4 rows end to end on a tiny budget, resumable, with the right
tokenizer settings per row."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from test_evaluate_cli import StandIn

from spectralar_hf import SpectralTokenizerConfig

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "table4_ablation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("table4_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("table4")
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(40, seed=3)), np.arange(40) % 10)
    torch.manual_seed(0)
    torch.jit.script(StandIn().eval()).save(str(root / "standin.pt"))
    argv = ["--idx_data_dir", str(root / "idx"), "--tokenizer_preset", "fmnist-32", "--num_latent_tokens", "16",
            "--tokenizer_steps", "2", "--tokenizer_batch_size", "4", "--generator_preset", "tiny",
            "--generator_steps", "2", "--generator_batch_size", "4", "--num_eval_images", "10",
            "--samples_per_class", "1", "--inception", str(root / "standin.pt"), "--work_dir", str(root / "work"),
            "--output", str(root / "table4.md"), "--rows", "1-titok", "4-spectralar"]
    table = load_script().main(argv)
    return root, argv, table


def test_every_row_is_trained_evaluated_and_tabulated(ablation):
    root, _, table = ablation
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| row | tokenizer | rFID | PSNR | gFID | precision | recall | paper FID")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 1", "| 4"]  # the rows asked for
    assert (root / "table4.md").read_text() == table
    for name in ("1-titok", "4-spectralar"):
        report = json.loads((root / "work" / name / "pipeline-10images-1perclass.json").read_text())
        assert report["num_samples"] == 10 and np.isfinite(report["gfid"])
        row = next(line for line in lines if line.startswith(f"| {name[0]} "))
        assert f"{report['gfid']:.2f}" in row


def test_rows_differ_only_in_the_tokenizer_settings_of_table_4(ablation):
    root, argv, _ = ablation
    script = load_script()
    args = script.parse_args(argv)
    configs = {row.name: SpectralTokenizerConfig.from_preset("fmnist-32", **json.loads(
        script.tokenizer_overrides(args, row))) for row in script.ROWS}
    for name in ("1-titok", "4-spectralar"):  # the trained ones were built from these settings
        trained = SpectralTokenizerConfig.from_pretrained(root / "work" / name / "tokenizer" / "tokenizer")
        fields = ("spectral_supervision", "causal", "omega", "num_latent_tokens", "codebook_size", "image_size")
        assert [getattr(trained, f) for f in fields] == [getattr(configs[name], f) for f in fields]
    settings = {name: (c.spectral_supervision, c.causal, c.omega) for name, c in configs.items()}
    uniform, nonuniform = list(range(2, 33, 2)), configs["4-spectralar"].omega
    assert nonuniform != uniform  # 16 tokens at 32 px: the two schedules really differ
    assert settings["1-titok"][:2] == (False, False)
    assert settings["2-nested-uniform"] == (True, False, uniform)
    assert settings["3-causal-uniform"] == (True, True, uniform)  # the paper's order: the mask, then Eq. 9
    assert settings["4-spectralar"] == (True, True, nonuniform)
    assert settings["x-nonuniform-no-mask"] == (True, False, nonuniform)
    assert script.DEFAULT_ROWS == ["1-titok", "2-nested-uniform", "3-causal-uniform", "4-spectralar"]
    sizes = {(c.num_latent_tokens, c.codebook_size, c.encoder_hidden_size) for c in configs.values()}
    assert sizes == {(16, 1024, 128)}


def test_a_rerun_skips_finished_stages_and_gives_the_same_table(ablation, capsys):
    _, argv, table = ablation
    assert load_script().main(argv) == table  # metrics and the first run's wall times
    out = capsys.readouterr().out
    assert out.count(": done (") == 2 * 5 and "train_" not in out


def test_a_missing_budget_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--idx_data_dir", str(tmp_path), "--work_dir", str(tmp_path), "--output",
                            str(tmp_path / "t.md")])
    assert "give --quick or all of: --tokenizer_preset" in capsys.readouterr().err


def test_other_evaluation_sizes_evaluate_again_and_other_training_is_refused(ablation, tmp_path, capsys):
    import shutil

    root, argv, _ = ablation
    work = tmp_path / "work"
    shutil.copytree(root / "work" / "1-titok", work / "1-titok")
    argv = [a if a != str(root / "work") else str(work) for a in argv]
    argv[argv.index("--rows") + 1:] = ["1-titok"]
    argv[argv.index("--samples_per_class") + 1] = "2"
    argv[argv.index("--output") + 1] = str(tmp_path / "t.md")
    load_script().main(argv)
    out = capsys.readouterr().out
    assert "gFID 10x2: " in out and "gFID 10x2: done" not in out  # a new gFID report, the models reused
    assert "rFID 10: done" in out and "generator: done" in out
    assert json.loads((work / "1-titok" / "pipeline-10images-2perclass.json").read_text())["num_samples"] == 20
    assert (work / "1-titok" / "pipeline-10images-1perclass.json").exists()  # the first report is kept
    argv[argv.index("--tokenizer_steps") + 1] = "3"
    with pytest.raises(ValueError, match=r"was trained with other settings \(tokenizer_steps 2 -> 3\); use another "
                                         r"--work_dir"):
        load_script().main(argv)
