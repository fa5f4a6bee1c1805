"""benchmarks/table4_ablation.py: the Table 4 rows end to end on a tiny budget, resumable, with the right tokenizer
settings per row, the generator-side metrics checked against direct computations, seeds and verdicts."""

import importlib.util
import json
import sys
from pathlib import Path

import datasets
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
            "--output", str(root / "table4.md"), "--rows", "4-spectralar"]  # rows differ in settings only (tested)
    table = load_script().main(argv)
    return root, argv, table


HEADER = ("| row | tokenizer | seeds | rFID | PSNR | gFID | gen. gap FID | precision | recall | NLL nats/token "
          "| NLL / unigram CE | paper FID | minutes |")


def test_every_row_is_trained_evaluated_and_tabulated(ablation):
    root, _, table = ablation
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == HEADER
    assert [line.split(" | ")[0] for line in lines[2:3]] == ["| 4"]  # the row asked for
    assert (root / "table4.md").read_text() == table
    recorded = json.loads((root / "table4.json").read_text())  # every row's and seed's metrics beside the table
    assert list(recorded) == ["4-spectralar"] and len(recorded["4-spectralar"]) == 1
    for name in ("4-spectralar",):
        work = root / "work" / name / "seed-0"
        report = json.loads((work / "pipeline-10images-1perclass.json").read_text())
        likelihood = json.loads((work / "likelihood-10images.json").read_text())
        psnr = json.loads((work / "tokenizer-10images.json").read_text())["psnr"]
        assert report["num_samples"] == 10 and np.isfinite(report["gfid"])
        cells = next(line for line in lines if line.startswith(f"| {name[0]} ")).split(" | ")
        assert cells[2] == "1"  # one seed: no ± std
        assert cells[3:10] == [f"{report['reconstruction_fid']:.1f}", f"{psnr:.2f}", f"{report['gfid']:.1f}",
                               f"{report['generation_gap_fid']:.1f}", f"{report['precision']:.3f}",
                               f"{report['recall']:.3f}", f"{likelihood['nll']:.3f}"]
        assert cells[10] == f"{likelihood['nll_ratio']:.3f}"
        assert recorded[name][0]["rfid"] == report["reconstruction_fid"]
        assert recorded[name][0]["nll_ratio"] == likelihood["nll_ratio"]


def test_the_likelihood_report_is_the_generators_nll_on_the_test_codes(ablation):
    from spectralar_hf import SpectralARPipeline
    from spectralar_hf.evaluation.report import load_evaluation_images

    root, _, _ = ablation
    work = root / "work" / "4-spectralar" / "seed-0"
    pipe = SpectralARPipeline.from_pretrained(work / "generator" / "pipeline")
    images, labels = load_evaluation_images(32, 1, idx_data_dir=str(root / "idx"), split="test", num_images=10)
    with torch.no_grad():
        codes = pipe.tokenizer.encode(images).codes
        nll = pipe.transformer(input_ids=codes, class_labels=labels, labels=codes).loss
    train_codes = np.array(datasets.load_from_disk(str(work / "codes" / "data"))["codes"]).ravel()
    vocab = pipe.tokenizer.config.codebook_size
    probabilities = (np.bincount(train_codes, minlength=vocab) + 1.0) / (train_codes.size + vocab)
    unigram = -np.log(probabilities[codes.numpy().ravel()]).mean()
    report = json.loads((work / "likelihood-10images.json").read_text())
    assert report["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert report["unigram_cross_entropy"] == pytest.approx(unigram, rel=1e-6)
    assert report["nll_ratio"] == pytest.approx(float(nll) / unigram, rel=1e-5)


def test_the_prefix_table_is_each_prefix_psnr_against_the_full_image(ablation):
    from spectralar_hf import SpectralTokenizer
    from spectralar_hf.evaluation import psnr
    from spectralar_hf.evaluation.report import load_evaluation_images

    root, _, table = ablation
    work = root / "work" / "4-spectralar" / "seed-0"
    tokenizer = SpectralTokenizer.from_pretrained(work / "tokenizer" / "tokenizer")
    images, _ = load_evaluation_images(32, 1, idx_data_dir=str(root / "idx"), split="test", num_images=10)
    header = next(line for line in table.splitlines() if line.startswith("| row | k = "))
    prefixes = [int(cell.strip(" |k=")) for cell in header.split(" | ")[1:]]
    assert prefixes == [2, 4, 8, 12, 16]  # N/8, N/4, N/2, 3N/4, N of 16 tokens
    row = next(line for line in table.splitlines()[table.splitlines().index(header):] if line.startswith("| 4 "))
    with torch.no_grad():
        codes = tokenizer.encode(images).codes
        for k, cell in zip(prefixes, row.strip(" |").split(" | ")[1:]):
            reconstruction = tokenizer.decode(codes, num_tokens=k).reconstruction.clamp(-1, 1)
            per_image = psnr(reconstruction, images, reduction="none")
            assert cell == f"{float(per_image.mean()):.2f}"


def test_rows_differ_only_in_the_tokenizer_settings_of_table_4(ablation):
    root, argv, _ = ablation
    script = load_script()
    args = script.parse_args(argv)
    configs = {row.name: SpectralTokenizerConfig.from_preset("fmnist-32", **json.loads(
        script.tokenizer_overrides(args, row))) for row in script.ROWS}
    for name in ("4-spectralar",):  # the trained one was built from these settings
        trained = SpectralTokenizerConfig.from_pretrained(root / "work" / name / "seed-0" / "tokenizer" / "tokenizer")
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
    assert settings["y-full-length"] == settings["z-matched"] == settings["4-spectralar"]
    assert configs["y-full-length"].full_length_loss_weight == 1.0  # its only difference from row 4
    assert {c.full_length_loss_weight for name, c in configs.items() if name != "y-full-length"} == {0.0}
    assert script.DEFAULT_ROWS == ["1-titok", "2-nested-uniform", "3-causal-uniform", "4-spectralar"]
    sizes = {(c.num_latent_tokens, c.codebook_size, c.encoder_hidden_size) for c in configs.values()}
    assert sizes == {(16, 1024, 128)}


def test_a_rerun_skips_finished_stages_and_gives_the_same_table(ablation, capsys):
    _, argv, table = ablation
    assert load_script().main(argv) == table  # metrics and the first run's wall times
    out = capsys.readouterr().out
    assert out.count(": done (") == 5 and "train_" not in out and "  NLL " not in out


def test_a_missing_budget_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--idx_data_dir", str(tmp_path), "--work_dir", str(tmp_path), "--output",
                            str(tmp_path / "t.md")])
    assert "give --quick or all of: --tokenizer_preset" in capsys.readouterr().err


def test_other_evaluation_sizes_evaluate_again_and_other_training_is_refused(ablation, tmp_path, capsys):
    import shutil

    root, argv, _ = ablation
    work = tmp_path / "work"
    shutil.copytree(root / "work" / "4-spectralar", work / "4-spectralar")
    argv = [a if a != str(root / "work") else str(work) for a in argv]
    argv[argv.index("--samples_per_class") + 1] = "2"
    argv[argv.index("--output") + 1] = str(tmp_path / "t.md")
    load_script().main(argv)
    out = capsys.readouterr().out
    assert "gFID 10x2: " in out and "gFID 10x2: done" not in out  # a new gFID report, the models reused
    assert "PSNR 10: done" in out and "generator: done" in out
    seed = work / "4-spectralar" / "seed-0"
    assert json.loads((seed / "pipeline-10images-2perclass.json").read_text())["num_samples"] == 20
    assert (seed / "pipeline-10images-1perclass.json").exists()  # the first report is kept
    argv[argv.index("--tokenizer_steps") + 1] = "3"
    with pytest.raises(ValueError, match=r"was trained with other settings \(tokenizer_steps 2 -> 3\); use another "
                                         r"--work_dir"):
        load_script().main(argv)


def synthetic_run(**metrics):
    run = dict(rfid=100.0, psnr=18.0, gfid=100.0, generation_gap_fid=5.0, precision=0.2, recall=0.1, nll=5.0,
               nll_ratio=0.5, prefix_psnr={k: 10.0 + k for k in range(1, 25)}, seconds={"tokenizer": 60.0})
    run.update(metrics)
    return run


def test_the_table_gives_mean_and_std_over_seeds_and_a_verdict_per_step(ablation):
    _, argv, _ = ablation
    script = load_script()
    args = script.parse_args(argv)
    gfids = {"1-titok": [160.0, 170.0, 165.0], "2-nested-uniform": [150.0, 151.0, 149.0]}
    nll_ratios = {"1-titok": [0.50, 0.51, 0.49], "2-nested-uniform": [0.50, 0.52, 0.49]}
    rfids = {"1-titok": [100.0, 101.0, 102.0], "2-nested-uniform": [130.0, 131.0, 132.0]}
    results = {name: [synthetic_run(gfid=g, nll_ratio=r, rfid=f) for g, r, f in
                      zip(gfids[name], nll_ratios[name], rfids[name])] for name in gfids}
    table = script.format_table(args, results)
    row = next(line for line in table.splitlines() if line.startswith("| 1 | 1D")).split(" | ")
    mean, std = np.mean(gfids["1-titok"]), np.std(gfids["1-titok"], ddof=1)
    assert row[2] == "3" and row[5] == f"{mean:.1f} ± {std:.1f}" == "165.0 ± 5.0"
    step = next(line for line in table.splitlines() if line.startswith("| 1 -> 2: nested spectral supervision"))
    cells = step.strip(" |").split(" | ")
    pooled = 2 * np.sqrt((np.var(rfids["1-titok"], ddof=1) + np.var(rfids["2-nested-uniform"], ddof=1)) / 2)
    assert cells[1] == f"+30 vs {pooled:.3g}: worse"  # rFID: the tokenizer side is "better" / "worse"
    assert cells[3].endswith(": reproduced")  # gFID 165 -> 150, well beyond 2 x the pooled std (7.2)
    assert cells[8].endswith(": within noise")  # NLL ratio 0.500 -> 0.503, std 0.01
    assert "| 2 -> 3" not in table and "| 1 -> 4" not in table  # judged only when both of its rows ran
    with_row4 = script.format_table(args, {**results, "4-spectralar": results["2-nested-uniform"]})
    assert "| 1 -> 4: all three steps (SpectralAR vs TiTok-style) | +30 vs" in with_row4
    single = script.format_table(args, {name: runs[:1] for name, runs in results.items()})
    assert "165.0 ±" not in single and "one seed, no noise estimate" in single


def test_verdicts_follow_each_metrics_direction():
    script = load_script()
    assert script.verdict([1.0, 1.1], [2.0, 2.1], higher_is_better=True, claim=True).endswith(": reproduced")
    assert script.verdict([1.0, 1.1], [2.0, 2.1], higher_is_better=False, claim=True).endswith(": reversed")
    assert script.verdict([1.0, 1.1], [2.0, 2.1], higher_is_better=False, claim=False).endswith(": worse")
    assert script.verdict([1.0, 3.0], [2.0, 4.0], higher_is_better=True, claim=True).endswith(": within noise")


def test_seeds_reach_every_training_script_and_matched_needs_row_1(ablation, tmp_path, capsys):
    root, argv, _ = ablation
    log = (root / "work" / "4-spectralar" / "seed-0" / "logs").iterdir()
    assert {path.name for path in log} >= {"tokenizer.log", "generator.log"}
    script = load_script()
    args = script.parse_args(argv)
    command = script.training_command(args, "train_generator.py", tmp_path / "g", 2, None, "--seed", "7")
    assert command[command.index("--seed") + 1] == "7"
    with pytest.raises(SystemExit):
        script.parse_args([*argv[: argv.index("--rows")], "--rows", "4-spectralar", "z-matched"])
    assert "z-matched trains until row 1's rFID: add 1-titok" in capsys.readouterr().err
    alone = [*argv[: argv.index("--rows")], "--rows", "z-matched"]
    assert script.parse_args([*alone, "--matched_target_rfid", "164.8"]).matched_target_rfid == 164.8
    with pytest.raises(SystemExit):
        script.parse_args([*alone, "--matched_target_rfid", "0"])
    assert "--matched_target_rfid must be a positive FID" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--matched_segment_steps", "5", "--matched_max_steps", "4"])
    assert "--matched_max_steps (4) is below one segment of --matched_segment_steps (5)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--seeds", "1", "1"])
    assert "--seeds must be distinct" in capsys.readouterr().err


def test_the_matched_row_trains_in_segments_until_its_target(ablation, tmp_path):
    root, argv, _ = ablation
    script = load_script()
    argv = [a if a != str(root / "work") else str(tmp_path / "work") for a in argv]
    args = script.parse_args([*argv, "--matched_max_steps", "4"])
    row = next(row for row in script.ROWS if row.name == "z-matched")
    work = tmp_path / "work" / "z-matched" / "seed-0"
    common = [*script.data_arguments(args), "--train_batch_size", "4"]
    seconds = {}
    # an unreachable target: every segment is trained, kept and scored, up to --matched_max_steps
    folder, steps, rfid = script.train_matched_tokenizer(args, work, 0, -1.0, common, row, seconds)
    assert (folder, steps) == (work / "segments" / "tokenizer-4", 4) and not rfid <= -1.0
    assert sorted(p.name for p in (work / "segments").iterdir() if p.is_dir()) == ["tokenizer-2", "tokenizer-4"]
    first = json.loads((work / "segments" / "rfid-2-10images.json").read_text())["rfid"]
    assert json.loads((work / "segments" / "rfid-4-10images.json").read_text())["rfid"] == rfid
    assert set(seconds) == {"tokenizer", "rFID at 2", "rFID at 4"}  # the segments' training time adds up
    log = (work / "logs" / "tokenizer-to-4.log").read_text()
    assert "resum" in log.lower()  # the second segment resumed the first one's checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert config["omega"] != list(range(2, 33, 2)) and config["causal"]  # row 4's tokenizer
    # a reachable target stops at the first segment that meets it, reusing what exists
    folder, steps, again = script.train_matched_tokenizer(args, work, 0, first, common, row, {})
    assert (folder.name, steps, again) == ("tokenizer-2", 2, first)


def test_the_matched_row_runs_alone_against_a_given_target(ablation, tmp_path):
    """--matched_target_rfid (e.g. row 1's recorded mean) replaces rerunning row 1: the z row trains to it alone."""
    root, argv, _ = ablation
    argv = [a if a != str(root / "work") else str(tmp_path / "work") for a in argv]
    argv[argv.index("--output") + 1] = str(tmp_path / "z.md")
    argv = [*argv[: argv.index("--rows")], "--rows", "z-matched", "--matched_target_rfid", "1e6"]
    table = load_script().main(argv)
    row = next(line for line in table.splitlines() if line.startswith("| z "))
    assert "steps: 2 (segments of 2, target rFID 1000000.0) |" in row  # the first segment meets a target that high
    recorded = json.loads((tmp_path / "z.json").read_text())["z-matched"][0]
    assert (recorded["matched_steps"], recorded["matched"], recorded["target_rfid"]) == (2, True, 1e6)
    assert not (tmp_path / "work" / "1-titok").exists()


def test_matched_segments_can_be_shorter_than_the_rows_training(ablation, tmp_path):
    """--matched_segment_steps scores the z tokenizer more often (stops nearer the target) with the rows' warm-up;
    the work folder records it, so a rerun with other segments is refused instead of mixing them."""
    root, argv, _ = ablation
    script = load_script()
    argv = [a if a != str(root / "work") else str(tmp_path / "work") for a in argv]
    args = script.parse_args([*argv, "--matched_segment_steps", "1", "--matched_max_steps", "2"])
    row = next(row for row in script.ROWS if row.name == "z-matched")
    work = tmp_path / "work" / "z-matched" / "seed-0"
    common = [*script.data_arguments(args), "--train_batch_size", "4"]
    folder, steps, _ = script.train_matched_tokenizer(args, work, 0, -1.0, common, row, {})
    assert (folder.name, steps) == ("tokenizer-2", 2)
    assert sorted(p.name for p in (work / "segments").iterdir() if p.is_dir()) == ["tokenizer-1", "tokenizer-2"]
    script.check_row_settings(args, work.parent, row)
    with pytest.raises(ValueError, match="matched_segment_steps 1 -> None"):
        script.check_row_settings(script.parse_args([*argv, "--matched_max_steps", "2"]), work.parent, row)
