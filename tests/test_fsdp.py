"""FSDP: every model wraps per block with torch's `fully_shard` (FSDP2) on 2 gloo CPU ranks; one training step's
updated weights equal the unsharded step's, the EMA follows the same weights and its checkpoint state
round-trips through a weights-only load, and the scaffold's full-state save path round-trips (tests/fsdp_worker.py
does the work on each rank)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "fsdp_worker.py"
MODELS = ("tokenizer", "generator", "far", "vqgan", "vae")
# float32 rounding of a reduce-scatter against a local sum, relative to how far the step moved the weights
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "reports.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER), "fsdp2", str(out), *MODELS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", MODELS)
def test_a_sharded_step_equals_the_unsharded_step(reports, name):
    report = reports[name]
    assert report["moved"] > 1e-2  # the step really changed the weights
    assert report["weights"] <= TOLERANCE * report["moved"]
    assert report["ema"] <= TOLERANCE * report["moved"]  # EMAModel over the shards, gathered
    assert report["ema_checkpoint"] == 0  # GatheredEMAState: saved gathered, loaded back into each rank's shards
    assert report["saved"] <= TOLERANCE * report["moved"]  # full_state_dict -> build_from_config -> save -> load
