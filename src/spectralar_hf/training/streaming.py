"""Streamed image data (`--streaming`): a `datasets.IterableDataset` read per rank and per DataLoader worker, shuffled
with a seeded buffer, decoded in the workers, and resumable at the exact batch.

A rank's stream is fixed by (seed, epoch, world size, number of workers): `datasets` splits the data per rank
(`split_dataset_by_node`: by shard when the shard count is a multiple of the world size, else one example in
`world_size`) and per worker (by shard), and shuffles the shard order and a buffer of examples with the seed (plus
the epoch). Each worker makes whole batches of its own examples; `StreamLoader` hands them out worker by worker in
turn (as torch's DataLoader does) and `StreamPosition` records how many examples of each worker were consumed and
whose turn is next. A resumed run skips exactly those examples in every worker (read, not decoded) and starts with
that worker: it trains on the batches the uninterrupted run would have trained on. The cost of a resume is reading
(not decoding) the part of the epoch already seen.

Across ranks an epoch ends for everyone when one rank's stream ends (`TrainingRun.batches` checks every micro-batch),
so all ranks take the same number of steps; the few batches the longer streams had left are not used in that epoch.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .data import IMAGE_COLUMNS, find_column, load_image_dataset

logger = logging.getLogger(__name__)

_WORKER, _POSITION, _END = "_stream_worker", "_stream_position", "_stream_end"


@dataclass
class StreamPosition:
    """Where a rank is in its stream: the epoch, the micro-batches of it consumed, the worker whose batch comes next
    and how many examples of each worker's share were consumed (`worker_examples[w]`)."""

    num_workers: int
    epoch: int = 0
    batches: int = 0
    next_worker: int = 0
    worker_examples: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.worker_examples:
            self.worker_examples = [0] * self.slots

    @property
    def slots(self) -> int:
        """Worker slots: the main process counts as worker 0 when there are no workers."""
        return max(self.num_workers, 1)

    def consume(self, worker: int, position: int) -> None:
        """A batch of `worker` ending at its example `position` was trained on."""
        self.worker_examples[worker] = position
        self.batches += 1
        self.next_worker = (worker + 1) % self.slots

    def next_epoch(self) -> None:
        self.epoch, self.batches, self.next_worker = self.epoch + 1, 0, 0
        self.worker_examples = [0] * self.slots

    def to_list(self) -> list[int]:
        return [self.epoch, self.batches, self.next_worker, *self.worker_examples]

    def load_list(self, values: list[int]) -> None:
        if len(values) != 3 + self.slots:
            raise ValueError(f"A stream position of {len(values) - 3} worker slots cannot resume {self.slots}.")
        self.epoch, self.batches, self.next_worker = (int(v) for v in values[:3])
        self.worker_examples = [int(v) for v in values[3:]]


class StreamExample:
    """One streamed example -> the tensors a script trains on: `pixel_values` `(C, S, S)` in [-1, 1] through an
    `ImageTransform` (its random crop / flip drawn from `rng`), `labels` (with a label column) and any `extra_columns`
    as they are (e.g. captions)."""

    def __init__(self, transform, image_column: str, label_column: str | None = None,
                 extra_columns: tuple[str, ...] = ()):
        self.transform, self.image_column = transform, image_column
        self.label_column, self.extra_columns = label_column, tuple(extra_columns)

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        transform = copy.copy(self.transform)
        transform.rng = rng
        out = {"pixel_values": transform(example[self.image_column])}
        if self.label_column is not None:
            out["labels"] = int(example[self.label_column])
        for column in self.extra_columns:
            out[column] = example[column]
        return out


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Whole batches of one worker's share of the stream (`datasets` shards an IterableDataset by DataLoader worker),
    each tagged with the worker and the position of its last example, then an end marker. The first
    `skip[worker]` examples are read but not decoded; an incomplete last batch is dropped with `drop_last`. The
    augmentation of each example is seeded with `(seed, epoch, rank, worker, position)`, so it does not depend on
    what was skipped."""

    def __init__(self, source, make_example: Callable, batch_size: int, seed: int, rank: int, epoch: int,
                 skip: list[int], drop_last: bool):
        self.source, self.make_example, self.batch_size = source, make_example, batch_size
        self.seed, self.rank, self.epoch, self.skip, self.drop_last = seed, rank, epoch, skip, drop_last

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        batch: list[dict[str, Any]] = []
        for position, example in enumerate(self.source, start=1):
            if position <= self.skip[worker]:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, position])
            batch.append(self.make_example(example, rng))
            if len(batch) == self.batch_size:
                yield {**torch.utils.data.default_collate(batch), _WORKER: worker, _POSITION: position}
                batch = []
        if batch and not self.drop_last:
            yield {**torch.utils.data.default_collate(batch), _WORKER: worker, _POSITION: position}
        yield {_END: worker}


class StreamLoader:
    """The batches of one rank's stream, one epoch per iteration, from `position` on.

    Not a `torch.utils.data.DataLoader` on purpose: `accelerate.prepare` leaves it alone. A prepared DataLoader over
    an IterableDataset is by default read and decoded on the main process alone, which sends every rank its batches
    (`dispatch_batches`), and this stream is already split per rank. `TrainingRun.batches` places the batches on the
    device, ends epochs on all ranks together and records the position (`consume`) of every batch it trains on.

    Args:
        source: the rank's `datasets.IterableDataset` (`load_streamed_source`), images not decoded.
        make_example: example dict + NumPy generator -> dict of tensors (`StreamExample`).
        batch_size: examples per batch.
        seed, rank: seed the augmentations (with the epoch, worker and position).
        num_workers: DataLoader worker processes that read and decode (0: the main process).
        fingerprint: what a checkpoint's position must have been made with (flags, world size) to be resumed.
        drop_last: drop each worker's incomplete last batch (training); keep it to read every example once
            (pre-tokenizing, caching).
    """

    def __init__(self, source, make_example: Callable, batch_size: int, *, seed: int, rank: int, num_workers: int,
                 fingerprint: dict[str, Any], drop_last: bool = True):
        self.source, self.make_example, self.batch_size, self.drop_last = source, make_example, batch_size, drop_last
        self.seed, self.rank, self.num_workers = seed, rank, num_workers
        self.fingerprint = {**fingerprint, "batch_size": batch_size, "num_workers": num_workers, "seed": seed}
        self.position = StreamPosition(num_workers)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
        """`(batch, (worker, position))` of the current epoch from `position`; pass the pair to `consume` once the
        batch is trained on."""
        position = self.position
        self.source.set_epoch(position.epoch)
        if position.batches:
            logger.info(f"Resuming epoch {position.epoch} of the stream after {position.batches} batches: reading "
                        f"(not decoding) the {sum(position.worker_examples)} examples already seen")
        loader = torch.utils.data.DataLoader(
            _WorkerBatches(self.source, self.make_example, self.batch_size, self.seed, self.rank, position.epoch,
                           list(position.worker_examples), self.drop_last),
            # its own generator: iterating must not draw from the global one, which a resumed run restored to the
            # checkpoint's state (an extra draw there would change every later random number of the training)
            batch_size=None, num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))
        items = iter(loader)
        slots = position.slots
        queues: list[deque] = [deque() for _ in range(slots)]
        ended = [False] * slots
        turn = position.next_worker
        while not all(ended):
            while not queues[turn] and not ended[turn]:  # the DataLoader's order may differ after a resume
                item = next(items)
                if _END in item:
                    ended[item[_END]] = True
                else:
                    queues[item[_WORKER]].append(item)
            if queues[turn]:
                batch = queues[turn].popleft()
                marker = (batch.pop(_WORKER), batch.pop(_POSITION))
                yield batch, marker
            turn = (turn + 1) % slots

    def consume(self, marker: tuple[int, int]) -> None:
        self.position.consume(*marker)

    def check_resumable(self, fingerprint: dict[str, Any]) -> None:
        """A checkpoint's stream `fingerprint` must be this stream's: otherwise its position means other batches."""
        differ = {key: (fingerprint.get(key), value) for key, value in self.fingerprint.items()
                  if fingerprint.get(key) != value}
        if differ:
            details = ", ".join(f"{key} {saved!r} (now {now!r})" for key, (saved, now) in sorted(differ.items()))
            raise ValueError(f"The checkpoint's data stream was read with other settings: {details}. Resume with "
                             f"the same data flags, --dataloader_num_workers, --seed and number of processes, or "
                             f"start a new run.")


def load_streamed_source(args: Any, max_samples_flag: str = "max_train_samples", *, rank: int = 0,
                         world_size: int = 1, shuffle: bool = True):
    """The `--streaming` source of a script's data flags as this rank's `datasets.IterableDataset`: `--dataset_name`
    (with `--dataset_config_name`), `--train_data_files` (tar / parquet / arrow; brace patterns expanded) or
    `--train_data_dir` (an image folder), the `--split`, cut to the first `--{max_samples_flag}` examples, shuffled
    with `--seed` in a buffer of `--shuffle_buffer_size` examples (when `shuffle`) and split for `rank` of
    `world_size`. Returns `(source, image_column)`; the image column is not decoded (`StreamExample` decodes it)."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if args.idx_data_dir is not None:
        raise ValueError("--streaming reads a `datasets` source (--dataset_name, --train_data_files or "
                         "--train_data_dir); --idx_data_dir files are read into memory: drop --streaming.")
    source = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split,
                                args.cache_dir, args.train_data_files, streaming=True)
    image_column = find_column(source, args.image_column, IMAGE_COLUMNS, "image")
    source = source.cast_column(image_column, datasets.Image(decode=False))
    limit = getattr(args, max_samples_flag, None)
    if limit is not None:
        source = source.take(limit)
    if shuffle:
        source = source.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
    if world_size > 1:
        source = split_dataset_by_node(source, rank=rank, world_size=world_size)
    return source, image_column


def stream_fingerprint(args: Any, world_size: int, max_samples_flag: str = "max_train_samples") -> dict[str, Any]:
    """The data flags and world size a stream position depends on."""
    return {"world_size": world_size, "dataset_name": args.dataset_name,
            "dataset_config_name": args.dataset_config_name, "train_data_files": args.train_data_files,
            "train_data_dir": args.train_data_dir, "split": args.split,
            "max_samples": getattr(args, max_samples_flag, None), "shuffle_buffer_size": args.shuffle_buffer_size}


class StreamHead:
    """The first examples of the unshuffled stream, kept undecoded and decoded on access: fixed validation or
    evaluation images (`head[i]` -> `make_example`'s dict) that do not touch the training order."""

    def __init__(self, args: Any, make_example: Callable, count: int, max_samples_flag: str = "max_train_samples"):
        source, _ = load_streamed_source(args, max_samples_flag, shuffle=False)
        self.examples = [example for _, example in zip(range(count), source)]
        if not self.examples:
            raise ValueError("The stream is empty; check the data source and --split.")
        self.make_example, self.seed = make_example, args.seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_example(self.examples[index], np.random.default_rng([self.seed, int(index)]))
