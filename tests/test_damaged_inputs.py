"""Damaged inputs that used to end in a traceback (issue 29) answer in one line that names the file and the fix.

- Each converter in `conversion/` given a file that is not a torch checkpoint (a text file renamed `.pth` / `.bin` /
  `.ckpt`, a zero-byte or truncated download) exits with status 2 and one stderr line (was: `KeyError: 101`,
  `IndexError: pop from empty list`, ... from inside `checkpoint_io`'s weights-only `torch.load`); a pickle that needs
  `weights_only=False` is still refused with its own message, and its payload never runs.
- `examples/sample.py` resuming with a truncated or zero-byte shard in `OUTPUT.shards/` (was: `BadZipFile` /
  `EOFError`) names the shard in a warning, deletes it and samples it again: the merged `.npz` equals the one of an
  uninterrupted run. What cannot be resampled (something else in the shard's place) is one `ValueError` naming it.
"""

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample_script import load, load_script, pipelines, run_in_process  # noqa: F401 (pipelines: a fixture)

from spectralar_hf.checkpoint_io import load_state_dict_file
from spectralar_hf.evaluation.sampling import read_shard, remove_damaged_shards, shard_ranges

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSION = Path(__file__).resolve().parents[1] / "conversion"
# the flags each converter needs besides --checkpoint / --output (a preset that needs no download)
CONVERTERS = {
    "convert_far": ["--model", "far_base"],
    "convert_maskgit_vqgan": [],
    "convert_titok": ["--config", "titok_s128"],
    "convert_mar_vae": [],
}
EXTENSIONS = [".pth", ".bin", ".ckpt"]
DAMAGED = "is not a readable weights-only PyTorch checkpoint: it is damaged, truncated or in another format"
FIX = "check that it is the right file, or download or export it again"
_MODULES: dict[str, object] = {}


def converter(name: str):
    """A `conversion/` script imported as a module (once)."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"damaged_{name}", CONVERSION / f"{name}.py")
        _MODULES[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_MODULES[name])
    return _MODULES[name]


def convert(name: str, checkpoint: Path, output: Path, capsys) -> tuple[int, list[str]]:
    """`name`'s main on `checkpoint`: its exit status and its stderr lines."""
    capsys.readouterr()
    status = converter(name).main(["--checkpoint", str(checkpoint), "--output", str(output), *CONVERTERS[name]])
    return status, capsys.readouterr().err.splitlines()


def truncated_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(64)}}, buffer)
    return buffer.getvalue()[:200]  # a download cut short: the zip's central directory is missing


class Payload:
    """Unpickling this runs `touch MARKER`: a checkpoint that needs `weights_only=False`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------ converters


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_converter_refuses_a_text_file_in_one_line(name, extension, tmp_path, capsys):
    checkpoint = tmp_path / f"notes{extension}"
    checkpoint.write_text("hello\n")  # `echo hello > x.pth`: was KeyError: 101 from the weights-only unpickler
    status, lines = convert(name, checkpoint, tmp_path / "out", capsys)
    assert status == 2
    assert lines == [f"{name}: error: {checkpoint} {DAMAGED} (KeyError: 101); {FIX} (a torch.save state dict, or a "
                     f".safetensors file)."]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, detail", [
    (b"", "the file is empty (0 bytes)"),
    (b"not a checkpoint\n", "UnpicklingError: Unsupported operand 110"),
    (b"cat\nhello\n", "UnpicklingError: Unsupported global: GLOBAL at.hello"),  # text that spells a pickle GLOBAL
    (b"a text file\n", "IndexError: pop from empty list"),  # "a" is APPEND: pops an empty stack
    (truncated_checkpoint(), "RuntimeError: PytorchStreamReader failed reading zip archive"),
], ids=["zero-bytes", "text", "text-global", "pop-empty-stack", "truncated-zip"])
@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_converter_refuses_a_damaged_file_in_one_line(name, content, detail, tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(content)
    status, lines = convert(name, checkpoint, tmp_path / "out", capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: error: {checkpoint} {DAMAGED} ({detail}") and FIX in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_a_pickle_that_needs_more_than_weights_only_is_still_refused_and_never_run(name, tmp_path, capsys):
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "payload.pth"
    torch.save({"model": {"w": torch.ones(2)}, "model_ema": Payload(marker), "args": Payload(marker)}, checkpoint)
    status, lines = convert(name, checkpoint, tmp_path / "out", capsys)
    assert status == 2 and len(lines) == 1, lines
    # the refusal, naming the global that would run, not the damaged-file message
    assert lines[0].startswith(f"{name}: error: {checkpoint} is not a readable weights-only PyTorch checkpoint: it "
                               f"holds objects that only a full unpickle builds, and loading it could run code")
    assert "GLOBAL posix.system" in lines[0] and "refused" in lines[0] and "\x1b" not in lines[0]
    assert "damaged" not in lines[0]
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"not a readable weights-only PyTorch checkpoint: it holds objects"):
        load_state_dict_file(checkpoint, key="model")
    assert not marker.exists()


def test_good_checkpoints_still_load(tmp_path):
    """The same loader reads a zip and a legacy checkpoint (nothing valid is taken for damaged)."""
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.bin"):
        assert torch.equal(load_state_dict_file(tmp_path / name)["w"], state["w"])


# ------------------------------------------------------------------ examples/sample.py


def resume(args: list, monkeypatch) -> list[range]:
    """Run sample.py's main again in this process; returns the index ranges it sampled."""
    script = load_script()
    sampled = []
    original = script.sample_shard
    monkeypatch.setattr(script, "sample_shard", lambda pipe, acc, indices, *a: sampled.append(indices) or
                        original(pipe, acc, indices, *a))
    from accelerate.state import AcceleratorState, GradientState

    try:
        script.main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return sampled


@pytest.mark.parametrize("damage", ["truncated", "zero-bytes"])
def test_a_damaged_shard_is_resampled_on_resume(pipelines, tmp_path, damage, monkeypatch, capsys):  # noqa: F811
    args = [pipelines / "spectralar", "--samples_per_class", 3, "--shard_size", 2, "--output", tmp_path / "s.npz",
            "--keep_shards"]
    run_in_process(*args)
    images, labels = load(tmp_path / "s.npz")
    shards = sorted((tmp_path / "s.shards").glob("shard-*.npz"))
    assert len(shards) == 5
    damaged = shards[1]  # images 2 and 3
    original = read_shard(damaged)
    data = damaged.read_bytes()
    damaged.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(ValueError, match=f"shard '{damaged}' is not readable .*; delete it and rerun to resample it"):
        read_shard(damaged)  # what a merge of it would say (was: BadZipFile / EOFError)
    for path in (tmp_path / "s.npz", tmp_path / "s.json"):  # as if killed before the merge
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in shards if path != damaged}
    capsys.readouterr()
    assert resume(args, monkeypatch) == [range(2, 4)]  # the damaged shard only
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"shard {damaged} is damaged (" in warnings[0]
    assert "sampled again" in warnings[0]
    if damage == "zero-bytes":
        assert "(the file is empty (0 bytes))" in warnings[0]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())  # the others are not redone
    resampled = read_shard(damaged)
    for key in ("arr_0", "arr_1", "indices"):
        np.testing.assert_array_equal(resampled[key], original[key])
    merged_images, merged_labels = load(tmp_path / "s.npz")
    assert merged_images.dtype == images.dtype and merged_images.tobytes() == images.tobytes()
    assert merged_labels.tobytes() == labels.tobytes()


def test_a_shard_that_cannot_be_resampled_is_one_error_naming_it(pipelines, tmp_path, monkeypatch):  # noqa: F811
    """Something that is not a shard file in a shard's place (here a directory) is not deleted: one error says what
    to move away."""
    args = [pipelines / "spectralar", "--samples_per_class", 2, "--shard_size", 2, "--output", tmp_path / "s.npz",
            "--keep_shards"]
    run_in_process(*args)
    (tmp_path / "s.npz").unlink()
    blocked = tmp_path / "s.shards" / "shard-00001.npz"
    blocked.unlink()
    blocked.mkdir()
    (blocked / "keep.txt").write_text("mine")
    with pytest.raises(ValueError) as error:
        resume(args, monkeypatch)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{blocked} is in the place of shard 2 .. 3 but is not a readable "
                                                      f"shard (IsADirectoryError")
    assert message.endswith("; move it away and rerun to resample the shard.")
    assert (blocked / "keep.txt").read_text() == "mine"


def test_only_files_named_like_shards_are_deleted(tmp_path):
    labels = np.arange(4, dtype=np.int64)
    ranges = shard_ranges(4, 2)
    other = tmp_path / "mine.npz"  # a damaged file of another name in the list: named, not deleted
    other.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{other} is in the place of shard 0 .. 1 but is not a readable shard "
                                         r"\(the file is empty \(0 bytes\)\) nor a shard file to replace"):
        remove_damaged_shards([other, tmp_path / "shard-00001.npz"], ranges, labels)
    assert other.exists()
    shard = tmp_path / "shard-00000.npz"
    shard.write_text("not an npz\n")
    messages = []
    assert remove_damaged_shards([shard, tmp_path / "shard-00001.npz"], ranges, labels, warn=messages.append) == [shard]
    assert not shard.exists() and len(messages) == 1 and str(shard) in messages[0]
