"""Training helpers: transforms, parameter groups, crash-safe checkpoint discovery, the end of a run."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from spectralar_hf import SpectralTokenizer
from spectralar_hf.training.checkpointing import checkpoint_step, end_run, latest_checkpoint, list_checkpoints
from spectralar_hf.training.data import ImageTransform, PhotoCropDataset, numpy_to_pixel_values, random_crops
from spectralar_hf.training.optim import decay_parameter_groups


def test_numpy_to_pixel_values_range_and_layout():
    array = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    array[0, 0, 0] = [255, 0, 128]
    pixels = numpy_to_pixel_values(array)
    assert pixels.shape == (2, 3, 4, 5)
    assert pixels[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_image_transform_resizes_crops_and_converts():
    image = Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8))
    rgb = ImageTransform(32, 3)(image)
    gray = ImageTransform(32, 1)(image)
    assert rgb.shape == (3, 32, 32) and gray.shape == (1, 32, 32)
    assert rgb.min() >= -1 and rgb.max() <= 1
    # the centre crop of a resized image is deterministic; random crops depend on the generator
    assert torch.equal(ImageTransform(32, 3)(image), rgb)
    a = ImageTransform(32, 3, random_crop=True, generator=np.random.default_rng(1))(image)
    b = ImageTransform(32, 3, random_crop=True, generator=np.random.default_rng(1))(image)
    assert torch.equal(a, b)


def test_photo_crops_are_reproducible():
    pytest.importorskip("skimage")
    from spectralar_hf.training.data import load_sample_photos

    photos = load_sample_photos(("chelsea", "coffee"))
    first = random_crops(photos, 4, 16, seed=3)
    assert first.shape == (4, 3, 16, 16) and torch.equal(first, random_crops(photos, 4, 16, seed=3))
    stream = iter(PhotoCropDataset(photos, 16, seed=5))
    again = iter(PhotoCropDataset(photos, 16, seed=5))
    assert torch.equal(next(stream)["pixel_values"], next(again)["pixel_values"])
    other_rank = iter(PhotoCropDataset(photos, 16, seed=5, rank=1))
    assert not torch.equal(next(stream)["pixel_values"], next(other_rank)["pixel_values"])


def test_decay_groups_exclude_norms_biases_embeddings_and_tokens(tiny_tokenizer: SpectralTokenizer):
    decay, no_decay = decay_parameter_groups(tiny_tokenizer, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in tiny_tokenizer.named_parameters()}
    decayed_names = {names[i] for i in decay_ids}
    assert "encoder.layers.0.attn.qkv.weight" in decayed_names
    for name in ("encoder.latent_tokens", "encoder.position_embedding", "quantizer.codebook.weight",
                 "decoder.mask_token", "encoder.layers.0.norm1.weight", "encoder.layers.0.attn.qkv.bias"):
        assert name not in decayed_names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_tokenizer.parameters()))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_latest_checkpoint_ignores_partial_saves(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (100, 20, 300):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / ".checkpoint-400.partial").mkdir()  # a save killed half-way
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-100", "checkpoint-300"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-300"
    assert checkpoint_step(latest_checkpoint(tmp_path)) == 300
    with pytest.raises(ValueError, match="not a checkpoint-N"):
        checkpoint_step(tmp_path / ".checkpoint-400.partial")


def test_find_checkpoint_resolves_latest_paths_and_bare_names(tmp_path, monkeypatch):
    from spectralar_hf.training.checkpointing import find_checkpoint, resume_from_checkpoint

    for step in (100, 300):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / ".checkpoint-400.partial").mkdir()
    monkeypatch.chdir(tmp_path.parent)  # bare names must resolve inside output_dir, not the working directory
    assert resume_from_checkpoint(object(), tmp_path, None) == 0  # a fresh start touches nothing
    assert find_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-300"
    assert find_checkpoint(tmp_path, "checkpoint-100") == tmp_path / "checkpoint-100"
    assert find_checkpoint(tmp_path, str(tmp_path / "checkpoint-300")) == tmp_path / "checkpoint-300"
    for bad in ("checkpoint-200", ".checkpoint-400.partial", str(tmp_path / "missing")):
        with pytest.raises(ValueError, match="no complete checkpoint"):
            find_checkpoint(tmp_path, bad)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty", "latest")


def test_decay_groups_can_exclude_a_submodule_like_mar_and_far_do_their_diffusion_head():
    from spectralar_hf import FARConfig, FARTransformer

    model = FARTransformer(FARConfig.from_preset("tiny"))
    names = {id(p): n for n, p in model.named_parameters()}
    plain, _ = decay_parameter_groups(model, 0.02)
    far, far_no_decay = decay_parameter_groups(model, 0.02, no_decay_prefixes=("diffusion_head.",))
    plain_names = {names[id(p)] for p in plain["params"]}
    far_names = {names[id(p)] for p in far["params"]}
    head = {name for name in plain_names if name.startswith("diffusion_head.")}
    assert head and "diffusion_head.input_proj.weight" in head  # decayed by default ...
    assert far_names == plain_names - head  # ... not with the exclusion; the transformer's linears still are
    assert "encoder_layers.0.attn.qkv.weight" in far_names
    assert len(far["params"]) + len(far_no_decay["params"]) == len(list(model.parameters()))


def test_load_training_source_reads_idx_files_and_cuts_to_the_named_flag(tmp_path):
    import argparse

    import numpy as np
    from conftest import blob_images, write_idx_dataset

    from spectralar_hf.training.data import load_training_source

    write_idx_dataset(tmp_path, np.stack(blob_images(6, seed=1, size=28)), np.arange(6) % 10)
    args = argparse.Namespace(idx_data_dir=str(tmp_path), split="train", dataset_name=None, dataset_config_name=None,
                              train_data_dir=None, cache_dir=None, max_train_samples=4, max_samples=0)
    assert len(load_training_source(args)) == 4
    args.max_train_samples = None
    assert len(load_training_source(args)) == 6
    with pytest.raises(ValueError, match="The dataset is empty; check the data source and --max_samples"):
        load_training_source(args, "max_samples")


def test_end_run_frees_ddp_reducers_before_destroying_the_process_group(tmp_path):
    """A reducer freed after destroy_process_group would hold the group's last reference and join its worker
    threads under the GIL (an intermittent hang at the end of 2-process runs); end_run frees it while the group
    lives, then ends training as accelerate does."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    model(torch.randn(3, 4)).sum().backward()  # one reduction through the reducer

    class Accelerator:  # the two members end_run uses
        _models = [model, torch.nn.Linear(2, 2)]

        @staticmethod
        def end_training():
            assert dist.is_initialized()
            assert model.reducer is None and model.logger is None  # freed while the group was alive
            dist.destroy_process_group()

    end_run(Accelerator())
    assert not dist.is_initialized()
