"""Training data: `datasets` loading, PIL/NumPy/torch transforms (no torchvision) and offline sample photos."""

from __future__ import annotations

import copy
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

# Column names that hold images / class ids (webdataset shards name columns by file extension: "jpg", "cls", ...).
IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg", "jpeg", "png", "webp")
LABEL_COLUMNS = ("label", "labels", "class", "cls")

# `datasets` builders for --train_data_files, by file suffix (webdataset: one example per key in a tar shard)
DATA_FILE_BUILDERS = {".tar": "webdataset", ".parquet": "parquet", ".arrow": "arrow"}

# Real photos that ship inside scikit-image (no download needed). "astronaut" is kept out of training sets by
# default so that the README's demo reconstructs a photo the tokenizer never saw.
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "coins", "moon", "horse", "brick", "grass", "gravel",
)


def load_sample_photos(names: tuple[str, ...] | list[str] = SKIMAGE_PHOTOS) -> list[Image.Image]:
    """Real photos bundled with scikit-image as RGB PIL images (grayscale ones are replicated to RGB)."""
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Sample photos come from scikit-image, which ships them: `pip install scikit-image` "
            "(or `pip install spectralar_hf[photos]`)."
        ) from error
    photos = []
    for name in names:
        if not hasattr(skimage.data, name):
            raise ValueError(f"scikit-image has no sample photo {name!r}; choose from {SKIMAGE_PHOTOS}.")
        array = getattr(skimage.data, name)()
        if array.dtype != np.uint8:
            array = (255 * (array.astype(np.float64) / max(float(array.max()), 1.0))).astype(np.uint8)
        photos.append(Image.fromarray(array).convert("RGB"))
    return photos


def _crop_window(photo: Image.Image, rng: np.random.Generator, size: int, scale: tuple[float, float],
                 flip: bool) -> Image.Image:
    short_side = min(photo.size)
    side = int(round(rng.uniform(*scale) * short_side))
    side = min(max(side, min(size, short_side)), short_side)
    left = int(rng.integers(0, photo.size[0] - side + 1))
    top = int(rng.integers(0, photo.size[1] - side + 1))
    window = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    if flip and rng.random() < 0.5:
        window = window.transpose(Image.FLIP_LEFT_RIGHT)
    return window


def random_crops(
    photos: list[Image.Image],
    num_crops: int,
    size: int,
    scale: float | tuple[float, float] = 0.25,
    seed: int = 0,
    flip: bool = True,
) -> torch.Tensor:
    """Random square crops of `photos`, resized to `size` x `size`, as one float tensor in [-1, 1].

    Args:
        photos: RGB PIL images; crops are drawn round-robin over them.
        num_crops: how many crops.
        size: output side in pixels.
        scale: side of the crop window as a fraction of the photo's shorter side (a float or a (low, high) range).
        seed: NumPy seed, for reproducible crops.
        flip: random horizontal flips.

    Returns:
        `(num_crops, 3, size, size)` float32 tensor in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    bounds = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    crops = np.stack([
        np.asarray(_crop_window(photos[i % len(photos)], rng, size, bounds, flip)) for i in range(num_crops)
    ])
    return numpy_to_pixel_values(crops)


class PhotoCropDataset(torch.utils.data.IterableDataset):
    """Endless random crops of real photos (offline training data), yielding `{"pixel_values": (3, S, S)}`.

    Each worker and each distributed rank draws from its own seeded stream, so runs are reproducible.
    """

    def __init__(self, photos: list[Image.Image], size: int, scale: tuple[float, float] = (0.1, 0.6),
                 seed: int = 0, rank: int = 0, num_channels: int = 3):
        self.photos, self.size, self.scale = photos, size, scale
        self.seed, self.rank, self.num_channels = seed, rank, num_channels

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker_id])
        while True:
            photo = self.photos[int(rng.integers(len(self.photos)))]
            window = _crop_window(photo, rng, self.size, self.scale, flip=True)
            if self.num_channels == 1:
                window = window.convert("L")
            yield {"pixel_values": numpy_to_pixel_values(np.asarray(window)[None])[0]}


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package `dataset-fashion-mnist`
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format, optionally gzipped) into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"cannot read {path} ({type(error).__name__}: {error}); the file is truncated or corrupt: "
                         f"download or unpack it again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values but its header announces shape {shape}.")
    return array.reshape(shape)


def load_idx_dataset(directory: str | Path = FASHION_MNIST_DIR, split: str = "train",
                     class_names: tuple[str, ...] = FASHION_MNIST_CLASSES):
    """An MNIST-format dataset (e.g. Fashion-MNIST from Debian's `dataset-fashion-mnist`) as a `datasets.Dataset`
    with columns `image` (uint8 `(H, W)` arrays) and `label` (`ClassLabel` with `class_names`).

    `split` is `"train"` (files `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`) or `"test"`
    (`t10k-*`).
    """
    import datasets

    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test' for an IDX dataset, got {split!r}.")
    root = Path(directory)

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                     f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(
            f"No {prefix}-{kind} IDX file in {root}. For Fashion-MNIST: `apt-get install dataset-fashion-mnist` "
            f"(files in {FASHION_MNIST_DIR}) or point --idx_data_dir at a folder with the four IDX files."
        )

    images, labels = read_idx(find("images")), read_idx(find("labels"))
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels.")
    if int(labels.max()) >= len(class_names):
        raise ValueError(f"{root}: label {int(labels.max())} but only {len(class_names)} class names.")
    features = datasets.Features({
        "image": datasets.Array2D(shape=images.shape[1:], dtype="uint8"),
        "label": datasets.ClassLabel(names=list(class_names)),
    })
    return datasets.Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)


class ImageTransform:
    """PIL image (or array, or undecoded `datasets.Image` dict) -> `(C, S, S)` float tensor in [-1, 1]: resize the
    shorter side, crop (random or centre), flip.

    Args:
        resolution: output side `S`.
        num_channels: 1 (grayscale) or 3 (RGB).
        random_crop: random instead of centre crop.
        random_flip: random horizontal flip with probability 0.5.
        generator: NumPy generator for the random choices (seed it for reproducible runs).
    """

    def __init__(self, resolution: int, num_channels: int = 3, random_crop: bool = False, random_flip: bool = False,
                 generator: np.random.Generator | None = None):
        self.resolution, self.num_channels = resolution, num_channels
        self.random_crop, self.random_flip = random_crop, random_flip
        self.rng = generator if generator is not None else np.random.default_rng()

    def __call__(self, image: Image.Image | np.ndarray | dict) -> torch.Tensor:
        if isinstance(image, dict):  # an undecoded `datasets.Image` value: {"bytes": ..., "path": ...}
            import datasets

            image = datasets.Image().decode_example(image)
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        image = image.convert("L" if self.num_channels == 1 else "RGB")
        width, height = image.size
        scale = self.resolution / min(width, height)
        if scale != 1.0:
            size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
            image = image.resize(size, Image.BICUBIC)
        width, height = image.size
        if self.random_crop:
            left = int(self.rng.integers(0, width - self.resolution + 1))
            top = int(self.rng.integers(0, height - self.resolution + 1))
        else:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.random_flip and self.rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return numpy_to_pixel_values(np.asarray(image)[None])[0]


class AugmentedImages(torch.utils.data.Dataset):
    """`{"pixel_values": (C, S, S)}` of a `datasets.Dataset`'s images through an `ImageTransform` whose random crop /
    flip of image `i` in epoch `e` come from a generator seeded with `(seed, e, i)`.

    The augmentation then depends neither on which images were loaded before nor on a generator state that a
    checkpoint would have to carry: a resumed run that skips batches sees the same images as an uninterrupted one,
    and DataLoader workers do not repeat each other's draws. Call `set_epoch` at the start of every epoch.
    """

    def __init__(self, dataset, image_column: str, transform: ImageTransform, seed: int):
        self.dataset, self.image_column, self.transform, self.seed = dataset, image_column, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        transform = copy.copy(self.transform)
        transform.rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return {"pixel_values": transform(self.dataset[int(index)][self.image_column])}


def expand_data_files(patterns: str | list[str]) -> list[str]:
    """Expand webdataset-style brace patterns (`shards/{000000..001281}.tar`, `{train,extra}-*.parquet`) into a list;
    globs (`*`) are left for `datasets` to resolve."""
    from braceexpand import braceexpand

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return [path for pattern in patterns for path in braceexpand(pattern)]


def data_files_builder(files: list[str]) -> str:
    """The `datasets` builder that reads `files`, by their common suffix (`DATA_FILE_BUILDERS`)."""
    suffixes = {Path(path).suffix.lower() for path in files}
    unknown = sorted(suffixes - set(DATA_FILE_BUILDERS))
    if unknown or len(suffixes) != 1:
        raise ValueError(f"--train_data_files must all be one of {', '.join(DATA_FILE_BUILDERS)} "
                         f"(tar shards for webdataset, parquet or arrow files); got suffixes {sorted(suffixes)}.")
    return DATA_FILE_BUILDERS[suffixes.pop()]


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    data_files: str | list[str] | None = None,
    streaming: bool = False,
):
    """Load an image dataset with `datasets`: a Hub id (`dataset_name`), a local `imagefolder` (`train_data_dir`) or
    data files (`data_files`: tar shards for the webdataset builder, parquet or arrow files; brace patterns such as
    `shards/{000000..000099}.tar` expanded), all read into `split`.

    Returns the `datasets.Dataset` of `split`, or with `streaming` its `datasets.IterableDataset` (nothing downloaded
    or prepared first). Raises `ValueError` unless exactly one source is given, when the folder does not exist, or
    when the split is missing or (not streamed) empty.
    """
    import datasets

    if sum(source is not None for source in (dataset_name, train_data_dir, data_files)) != 1:
        raise ValueError("Give exactly one data source: --dataset_name (a datasets id), --train_data_dir (a folder) "
                         "or --train_data_files (tar / parquet shards).")
    common = dict(cache_dir=cache_dir, streaming=streaming)
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a directory; point it at an image folder.")
        try:
            dataset = datasets.load_dataset("imagefolder", data_dir=train_data_dir, **common)
        except FileNotFoundError as error:  # datasets' EmptyDatasetError
            raise ValueError(f"--train_data_dir {train_data_dir!r} contains no images ({error}); put image files "
                             f"(optionally in one sub-folder per class) there.") from None
    elif data_files is not None:
        files = expand_data_files(data_files)
        dataset = datasets.load_dataset(data_files_builder(files), data_files={split: files}, **common)
    else:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, **common)
    if split not in dataset:
        raise ValueError(f"The dataset has no split {split!r}; available: {list(dataset)}.")
    dataset = dataset[split]
    if not streaming and len(dataset) == 0:
        raise ValueError(f"The {split!r} split of the dataset is empty; check the data source.")
    return dataset


def load_training_source(args: Any, max_samples_flag: str = "max_train_samples"):
    """The dataset named by a script's data flags: `--idx_data_dir` (MNIST-format IDX files) or `--dataset_name` /
    `--train_data_dir` / `--train_data_files` (see `load_image_dataset`), with `--split` and `--cache_dir`, cut to
    the first `--{max_samples_flag}` images. Raises `ValueError` when nothing is left."""
    if args.idx_data_dir is not None:
        dataset = load_idx_dataset(args.idx_data_dir, args.split)
    else:
        dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split,
                                     args.cache_dir, getattr(args, "train_data_files", None))
    limit = getattr(args, max_samples_flag)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"The dataset is empty; check the data source and --{max_samples_flag}.")
    return dataset


def find_column(dataset, preferred: str | None, candidates: tuple[str, ...], kind: str) -> str:
    """Pick the column named `preferred`, else the first of `candidates` present; clear error otherwise (also for a
    stream that does not declare its columns and no `preferred`)."""
    columns = dataset.column_names
    if columns is None:  # a `datasets.IterableDataset` without declared features
        if preferred is None:
            raise ValueError(f"The stream does not declare its columns; pass --{kind}_column.")
        return preferred
    if preferred is not None:
        if preferred not in columns:
            raise ValueError(f"--{kind}_column {preferred!r} is not a column of the dataset; columns: {columns}.")
        return preferred
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"Cannot find the {kind} column among {columns}; pass --{kind}_column.")


def numpy_to_pixel_values(images: np.ndarray) -> torch.Tensor:
    """`(B, H, W, C)` or `(B, H, W)` uint8 (or float in [0, 1]) -> `(B, C, H, W)` float32 in [-1, 1]."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float() * 2.0 - 1.0


def collate_pixel_values(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` (and `labels` when present) of dataset examples."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
    return batch


def with_transform(dataset, transform: Callable[[Image.Image], torch.Tensor], image_column: str,
                   label_column: str | None = None):
    """Attach an on-the-fly transform producing `pixel_values` (and `labels`) to a `datasets.Dataset`."""

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [transform(image) for image in batch[image_column]]}
        if label_column is not None:
            out["labels"] = batch[label_column]
        return out

    return dataset.with_transform(apply)


@dataclass
class TrainingImages:
    """The images an autoencoder training script trains and validates on (`load_training_images`).

    Attributes:
        loader: a seeded, shuffled DataLoader of `{"pixel_values": (B, C, S, S)}` in [-1, 1] over `AugmentedImages`,
            or a `streaming.StreamLoader` (--streaming).
        epoch_datasets: what `TrainingRun.batches` calls `set_epoch` on.
        plain: centre-cropped images without augmentation, `plain[i]["pixel_values"]`: the whole dataset, or the
            stream's first examples (fixed validation and evaluation images).
    """

    loader: Any
    epoch_datasets: tuple
    plain: Sequence[dict[str, torch.Tensor]]


def load_training_images(args: Any, accelerator, image_size: int, num_channels: int, *, head: int
                         ) -> TrainingImages:
    """The training images of a script's data flags, augmented with --random_crop / --random_flip: a map-style
    dataset, or with --streaming this process's share of the stream, whose first `head` images are `plain`."""
    augmented = ImageTransform(image_size, num_channels, args.random_crop, args.random_flip)
    centred = ImageTransform(image_size, num_channels)
    if getattr(args, "streaming", False):
        from .streaming import StreamExample, StreamHead, StreamLoader, load_streamed_source, stream_fingerprint

        processes = accelerator.num_processes
        source, column = load_streamed_source(args, rank=accelerator.process_index, world_size=processes)
        loader = StreamLoader(source, StreamExample(augmented, column), args.train_batch_size, seed=args.seed,
                              rank=accelerator.process_index, num_workers=args.dataloader_num_workers,
                              fingerprint=stream_fingerprint(args, processes))
        return TrainingImages(loader, (), StreamHead(args, StreamExample(centred, column), head))
    source = load_training_source(args)
    column = find_column(source, args.image_column, IMAGE_COLUMNS, "image")
    if len(source) < args.train_batch_size:
        raise ValueError(f"The dataset has {len(source)} images, fewer than one batch of {args.train_batch_size}; "
                         f"lower --train_batch_size or add data.")
    train = AugmentedImages(source, column, augmented, args.seed)
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.train_batch_size, shuffle=True, drop_last=True, collate_fn=collate_pixel_values,
        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed))
    return TrainingImages(loader, (train,), AugmentedImages(source, column, centred, args.seed))
