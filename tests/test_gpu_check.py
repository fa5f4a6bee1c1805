"""benchmarks/gpu_check.sh --smoke: the GPU check's code path, tiny on the CPU (one run, several checks of its table),
plus the wrapper's failure and usage paths."""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHON": sys.executable}
SCRIPTS = ["train_tokenizer.py", "pretokenize.py", "train_generator.py", "train_vae.py", "train_far.py",
           "train_vqgan.py"]
CHECKS = [*(f"script {name}" for name in SCRIPTS), "saved SpectralARPipeline generates",
          "saved FARPipeline generates", "bf16 matmul peak", "train tokenizer", "train generator", "train FAR",
          "pipeline images/s", "parity encode", "parity decode", "parity greedy sample", "sample p1 vs GPT-2",
          "sample p4 vs GPT-2", "FAR sample", "sample p1 compiled", "pipeline images/s compiled"]
NUMBER = r"(\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?)"


def number(pattern: str, text: str) -> float:
    """The number captured by `pattern` (with NUMBER in it) in `text`, parsed."""
    match = re.search(pattern.replace("NUMBER", NUMBER), text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match.group(1).replace(",", ""))


def parse_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [re.split(r"(?<!\\)\|", line.strip()[1:-1]) for line in lines[2:]]
    return [dict(zip(header, (cell.strip() for cell in row))) for row in rows]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("gpu-check") / "gpu.md"
    start = time.perf_counter()
    result = subprocess.run(["bash", str(SCRIPT), "--smoke", "--output", str(output)], capture_output=True, text=True,
                            env=ENV, timeout=600, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    text = output.read_text()
    return {"stdout": result.stdout, "text": text, "rows": parse_table(text), "seconds": elapsed, "output": output}


def test_every_row_is_present_and_ok(smoke):
    rows = smoke["rows"]
    assert [row["check"] for row in rows if row["check"] in CHECKS] == [row["check"] for row in rows]
    assert set(CHECKS) == {row["check"] for row in rows}
    for row in rows:
        assert row["status"] == "ok" or row["status"].startswith("n/a: "), row
    counts = {check: sum(row["check"] == check for row in rows) for check in CHECKS}
    assert counts["sample p1 vs GPT-2"] == counts["sample p4 vs GPT-2"] == 4  # batch 1 / 2, with and without CFG
    assert counts["pipeline images/s"] == counts["FAR sample"] == 2
    compiled = [row for row in rows if "compiled" in row["check"]]
    assert all(row["status"].startswith("n/a: ") for row in compiled)  # compiled sampling is not timed on a CPU


def test_header_names_device_versions_command_and_date(smoke):
    text = smoke["text"]
    assert "- device: cpu" in text
    versions = text.split("- versions: ")[1].splitlines()[0]
    assert all(f"{name} " in versions for name in ("torch", "transformers", "diffusers", "accelerate"))
    assert f"- command: `bash benchmarks/gpu_check.sh --smoke --output {smoke['output']}`" in text
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert smoke["stdout"].startswith(f"bash benchmarks/gpu_check.sh --smoke --output {smoke['output']}\n")
    assert text.strip() in smoke["stdout"]  # the table is printed too


def test_scripts_train_resume_in_bf16_and_their_pipelines_generate(smoke):
    rows = {row["check"]: row for row in smoke["rows"]}
    for name in SCRIPTS:
        if name != "pretokenize.py":
            assert "steps 1-4 (resumed at 2)" in rows[f"script {name}"]["result"]
            assert "bf16 on cpu" in rows[f"script {name}"]["result"]
            assert number(r"loss NUMBER -> ", rows[f"script {name}"]["result"]) > 0
    assert number(r"NUMBER sequences x 16 codes", rows["script pretokenize.py"]["result"]) == 32  # 16 + flips
    for check in ("saved SpectralARPipeline generates", "saved FARPipeline generates"):
        assert number(r"NUMBER images", rows[check]["result"]) == 2


def test_measurements_parse(smoke):
    rows = smoke["rows"]
    by_check = {row["check"]: row for row in rows}
    assert number(r"NUMBER TFLOP/s", by_check["bf16 matmul peak"]["result"]) > 0
    for check in ("train tokenizer", "train generator", "train FAR"):
        result = by_check[check]["result"]
        assert number(r"NUMBER GFLOP/step", result) >= 0 and number(r"step NUMBER ms", result) > 0
        # > 0 only: on a CPU the 512^3 bf16 GEMM is no peak (beside other jobs it can measure slower than a training
        # step's own FLOP rate, so MFU can pass 100%); the bound means something on CUDA only
        assert number(r"MFU NUMBER%", result) > 0
    for row in rows:
        if row["check"].startswith("sample p") and "vs GPT-2" in row["check"]:
            assert number(r"ours NUMBER ms", row["result"]) > 0
            assert number(r"GPT-2 generate NUMBER ms", row["result"]) > 0
            assert number(r"GPT-2 / ours NUMBERx", row["result"]) > 0
        if row["check"] == "pipeline images/s":
            assert number(r"NUMBER images/s", row["result"]) > 0
        if row["check"] == "FAR sample":
            assert number(r"NUMBER s per batch", row["result"]) > 0


def test_parity_rows_pass(smoke):
    rows = {row["check"]: row for row in smoke["rows"]}
    for check in ("parity encode", "parity decode", "parity greedy sample"):
        assert rows[check]["setting"].startswith("cpu vs cpu (smoke)")
        assert rows[check]["status"] == "ok"
    assert number(r"codes equal NUMBER%", rows["parity encode"]["result"]) == 100
    assert number(r"max abs difference NUMBER", rows["parity decode"]["result"]) == 0
    assert number(r"codes equal NUMBER%", rows["parity greedy sample"]["result"]) == 100


def test_smoke_run_is_fast(smoke):
    assert smoke["seconds"] < 90, f"the smoke run took {smoke['seconds']:.0f} s"


# ---------------------------------------------------------------------------------------------------- failures


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_raising_check_is_a_fail_row_naming_the_place(tmp_path):
    gpu_check = load_gpu_check()
    report = gpu_check.Report(tmp_path / "gpu.md", tmp_path / "rows.jsonl", "cmd", True, torch.device("cpu"))

    def broken() -> tuple[str, bool | None]:
        raise ValueError("no | good")

    report.measure("broken check", "setting", "-", broken)
    report.measure("fine check", "setting", ">= 1", lambda: ("2 units", False))  # smoke: targets not evaluated
    rows = parse_table((tmp_path / "gpu.md").read_text())
    assert rows[0]["status"].startswith("FAIL: ValueError: no \\| good (tests/test_gpu_check.py:")
    assert rows[1]["status"] == "ok" and rows[1]["target"] == ">= 1 (CUDA only)"
    report.smoke = False
    report.measure("slow check", "setting", ">= 1", lambda: ("0.5 units", False))
    assert parse_table((tmp_path / "gpu.md").read_text())[2]["status"] == "below target"
    assert gpu_check.main(["fail", "--output", str(tmp_path / "gpu.md"), "--rows", str(tmp_path / "rows.jsonl"),
                           "--smoke", "--failed", "bench", "--reason", "timed out after 5 s"]) == 0
    assert parse_table((tmp_path / "gpu.md").read_text())[3] == {
        "check": "stage bench", "setting": "-", "result": "-", "target": "-", "status": "FAIL: timed out after 5 s"}


def test_a_crashed_stage_fails_the_wrapper(tmp_path):
    """A stand-in python whose stages crash: each stage gets a FAIL row, the log tail is shown, the exit status is 1."""
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\n'
                    'while [[ $# -gt 0 ]]; do [[ "$1" == fail ]] && failing=1; [[ "$1" == --output ]] && out="$2"; '
                    'shift; done\n'
                    'if [[ -n "${failing:-}" ]]; then echo "| stage | - | - | - | FAIL: crashed |" >> "$out"; exit 0; fi\n'
                    'echo "stand-in stage crashed" >&2; exit 3\n')
    stub.chmod(0o755)
    result = subprocess.run(["bash", str(SCRIPT), "--smoke", "--output", str(tmp_path / "gpu.md")],
                            capture_output=True, text=True, env={**ENV, "PYTHON": str(stub), "TMPDIR": str(tmp_path)}, timeout=60, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "stand-in stage crashed" in result.stderr and "FAILed" in result.stderr
    assert (tmp_path / "gpu.md").read_text().count("FAIL: crashed") == 2


@pytest.mark.parametrize("args,message", [
    (["--smoke", "--output", "benchmarks/results/gpu.md"], "never writes"),
    (["--bogus"], "unknown argument --bogus"),
    (["--output"], "--output needs a path"),
])
def test_usage_errors_exit_2(args, message):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr


def test_the_fsdp_rows_run_the_scripts_stage_again_under_accelerates_fsdp_config(tmp_path):
    """Not in the smoke run (accelerate refuses FSDP on a CPU machine): gpu_check.sh's third stage launches the
    scripts stage with examples/accelerate_fsdp.yaml on every GPU, and its rows are the same checks labelled."""
    text = SCRIPT.read_text()
    stage = text[text.index("if (( ! smoke )); then  # the scripts again under FSDP2"):]
    assert "--config_file examples/accelerate_fsdp.yaml" in stage and '--label "FSDP2 "' in stage
    assert "gpu_check.py scripts" in stage and "torch.cuda.device_count()" in stage
    module = load_gpu_check()
    recorded = []

    class Recorder:
        device = torch.device("cpu")

        def measure(self, check, *args, **kwargs):
            recorded.append(check)

    module.LabelledReport(Recorder(), "FSDP2 ").measure("script train_far.py", "setting", "target", lambda: None)
    assert recorded == ["FSDP2 script train_far.py"]
    assert module.parse_args(["scripts", "--output", "o", "--rows", "r", "--label", "FSDP2 "]).label == "FSDP2 "


def test_rates_keep_three_significant_digits():
    """A contended CPU's smoke run measures a few GFLOP/s: the peak must not print (and parse) as 0.00 TFLOP/s."""
    tflops = load_gpu_check().tflops
    assert tflops(4.123e9) == "0.00412 TFLOP/s"
    assert tflops(3.0e7) == "0.0000300 TFLOP/s"
    assert tflops(7.0e14) == "700.00 TFLOP/s" and tflops(1.2345e15) == "1,234.50 TFLOP/s"
    for rate in (1e6, 2.5e8, 9.99e10, 1e13):
        assert number(r"NUMBER TFLOP/s", tflops(rate)) == pytest.approx(rate / 1e12, rel=5e-3)
