"""Config -> objects: device and precision, datasets (generating the synthetic world when absent),
vocabularies, model, criterion and data loaders. The engine and inference build everything through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from langground._hardware import cpu_bf16_native, cpu_bf16_runs
from langground.config import Config, DataConfig, RunConfig
from langground.errors import DataError, LanggroundError
from langground.tasks import get_task
from langground.text.vocab import Vocabulary
from langground.types import GroundingRecord

# --------------------------------------------------------------------------------------------------
# device and precision


def resolve_device(name: str, local_rank: int = 0, option: str = "config run.device") -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU; otherwise ``name`` as given.

    ``option`` names where the value came from in the one-line error (``--device`` for the CLI).
    """
    given = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LanggroundError(
            f"{option}={given!r}: not a device: expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LanggroundError(f"{option}={given!r}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LanggroundError(
            f"{option}={given!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision mode: autocast dtype (None: fp32) and whether a GradScaler is needed."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(mode: str, device: torch.device) -> Precision:
    if mode == "none":
        return Precision(None, False)
    if mode == "fp16":
        if device.type != "cuda":
            raise LanggroundError("config run.amp='fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
        return Precision(torch.float16, True)
    # An explicit bf16 is honoured wherever it runs (emulated on CPUs without bf16 instructions: slow);
    # auto picks it on CPU only where it is native.
    bf16_ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_bf16_runs()
    if mode == "bf16":
        if not bf16_ok:
            raise LanggroundError(f"config run.amp='bf16': not supported on {device}; use 'none' or 'auto'")
        return Precision(torch.bfloat16, False)
    if mode == "auto":
        if device.type == "cuda":
            return Precision(torch.bfloat16, False) if bf16_ok else Precision(torch.float16, True)
        return Precision(torch.bfloat16, False) if cpu_bf16_native() else Precision(None, False)
    raise LanggroundError(f"config run.amp={mode!r}: expected none, auto, bf16 or fp16")


def autocast(device: torch.device, precision: Precision) -> Any:
    return torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None)


# --------------------------------------------------------------------------------------------------
# data


def _root(cfg: DataConfig) -> Path:
    return Path(os.path.expanduser(cfg.root))


def ensure_dataset(cfg: DataConfig, generate: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The dataset root; for ``synth``, the world is generated there first when the directory is absent
    or empty (``generate=False`` on ranks other than 0, which wait for rank 0). ``log`` receives what
    is being generated (where, how many images) and when it is done.

    Validate the rest of the config first (:func:`check_config`): generating takes minutes."""
    root = _root(cfg)
    missing = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    if cfg.dataset == "synth" and missing and generate:
        from langground.data.synthetic import SynthConfig, generate_world

        try:
            synth = SynthConfig(**cfg.synth)
            synth.validate()
        except (TypeError, ValueError) as e:
            raise LanggroundError(f"config data.synth: {e}") from None
        say = log or (lambda message: None)
        w, h = synth.size
        say(
            f"generating the synthetic world in {root}: {synth.images} images of {w}x{h} (seed {synth.seed}; "
            f"data.root has none yet; written once, then reused)"
        )
        t0 = time.perf_counter()
        quarters: set[int] = set()

        def progress(done: int, total: int) -> None:
            quarter = 4 * done // max(total, 1)
            if 0 < quarter < 4 and quarter not in quarters:
                quarters.add(quarter)
                say(f"  synth: {done}/{total} images")

        generate_world(root, synth, workers=cfg.synth_workers, progress=progress)
        say(f"generated {synth.images} images in {root} ({time.perf_counter() - t0:.0f} s)")
    return root


def check_config(config: Config) -> None:
    """Build the model and criterion of ``config`` on the meta device (no memory, no initialisation
    cost) with a placeholder vocabulary and answer list, so a bad model or loss option fails in one line
    before the data is read or generated."""
    from langground.text.vocab import PAD, UNK

    vocab = Vocabulary([PAD, UNK, "word"])
    answers = ["yes", "no"] if get_task(config.model.task).needs_answers else None
    try:
        with torch.device("meta"):
            model = build_model(config, vocab, answers, pretrained=False)
    except LanggroundError:
        raise
    except Exception:  # an initialisation that needs real values: build it for real (rare; slower)
        model = build_model(config, vocab, answers, pretrained=False)
    build_criterion(config, model)


def open_split(cfg: DataConfig, split: str, limit: int | None = None) -> Any:
    """``open_dataset(root, dataset, split, **open_kwargs)``, optionally cut to its first ``limit`` records.

    Returns the RecordDataset (its ``protocol`` is kept on a cut view too).
    """
    from langground.data import open_dataset

    records = open_dataset(_root(cfg), cfg.dataset, split, **cfg.open_kwargs)
    if len(records) == 0:
        raise DataError(f"{_root(cfg)}: split {split!r} of dataset {cfg.dataset!r} has no records")
    if limit is not None and limit < len(records):
        return RecordSubset(records, range(limit))
    return records


class RecordSubset(Sequence[GroundingRecord]):
    """Some records of a RecordDataset, keeping its ``protocol``, ``name`` and ``split``."""

    def __init__(self, base: Any, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)
        self.protocol = getattr(base, "protocol", None)
        self.name = getattr(base, "name", "")
        self.split = getattr(base, "split", "")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.base[j] for j in self.indices[i]]
        return self.base[self.indices[i]]


def build_vocab(records: Sequence[GroundingRecord], cfg: DataConfig) -> Vocabulary:
    return Vocabulary.build((r.text for r in records), min_count=cfg.vocab_min_count)


def build_answers(records: Sequence[GroundingRecord]) -> list[str]:
    """Answer list (most frequent first, ties by name) of the training split's questions."""
    counts = Counter(r.answer for r in records if r.answer is not None)
    if not counts:
        raise DataError("the training split has no answers: a VQA model needs question/answer records")
    return sorted(counts, key=lambda a: (-counts[a], a))


def answer_index(answers: Sequence[str] | None) -> dict[str, int] | None:
    return None if answers is None else {a: i for i, a in enumerate(answers)}


# --------------------------------------------------------------------------------------------------
# model and criterion


def build_model(
    config: Config, vocab: Vocabulary, answers: Sequence[str] | None = None, pretrained: bool = True
) -> nn.Module:
    """``create_model(name, task, input_size, max_text_length, vocab_size, num_answers, **kwargs)``.

    ``pretrained=False`` skips initialisations that read files (``glove_path``): a checkpoint's weights
    replace them anyway, and the file may no longer be where training found it.
    """
    from langground.registry import create_model, is_model, list_models

    name = config.model.name
    if not is_model(name):
        raise LanggroundError(
            f"config model.name={name!r}: not a registered model; known: {', '.join(list_models())}"
        )
    kwargs = dict(config.model.kwargs)
    if not pretrained:
        kwargs.pop("glove_path", None)
    elif kwargs.get("glove_path"):
        kwargs.setdefault("vocab", vocab)  # GloVe rows are looked up by the vocabulary's words
    kwargs.update(
        task=config.model.task,
        input_size=config.transforms.input_size,
        max_text_length=config.data.max_text_length,
        vocab_size=len(vocab),
    )
    if get_task(config.model.task).needs_answers:
        if not answers:
            raise LanggroundError("a VQA model needs its answer list (answers.json)")
        kwargs["num_answers"] = len(answers)
    try:
        model = create_model(name, **kwargs)
    except LanggroundError:
        raise
    except (TypeError, ValueError) as e:  # a factory's own check of its keyword arguments
        raise LanggroundError(f"config model.kwargs of {name!r}: {str(e).splitlines()[0]}") from None
    if pretrained and config.model.init_from:  # fine-tuning: another run's weights where they fit
        from langground.engine.init_from import init_from_checkpoint

        init_from_checkpoint(model, os.path.expanduser(config.model.init_from), vocab)
    return model


def build_criterion(config: Config, model: nn.Module | None = None) -> nn.Module:
    """The task's criterion with ``config.loss`` weights/options, plus the model's own loss terms and
    loss modules (``model.loss_weights``, ``model.build_loss_modules()``)."""
    from langground.losses import build_criterion as _build

    try:
        return _build(config.model.task, model=model, **config.loss)
    except ValueError as e:  # an unknown loss weight or option
        raise LanggroundError(f"config loss: {e}") from None


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Give a LanggroundError raised in a data-loader worker its one-line message back.

    The DataLoader re-raises a worker's exception with the worker's whole traceback as its message; the
    user's error (e.g. an image that does not decode) is the traceback's last line.
    """
    try:
        yield
    except LanggroundError as e:
        message = str(e)
        if "Original Traceback" not in message:
            raise
        last = [line.strip() for line in message.splitlines() if line.strip()][-1]
        raise type(e)(re.sub(r"^[\w.]+: ", "", last, count=1)) from None


# --------------------------------------------------------------------------------------------------
# loaders


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers ignore it so the main process can stop cleanly
    # (save a checkpoint) instead of finding its workers dead. One decoding thread per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def build_dataset(
    records: Sequence[GroundingRecord], config: Config, answers: Sequence[str] | None, train: bool
) -> Any:
    """The torch dataset of ``records``: one item per record, or with ``data.group_by_image`` one item per
    image holding all its records (at most ``data.max_queries_per_image`` per item), decoded and
    augmented once. ``item_lengths()`` gives the length curriculum its measure per item."""
    from langground.data.torch_dataset import GroundingTorchDataset, GroupedByImageDataset
    from langground.data.transforms import build_transforms

    kwargs: dict[str, Any] = dict(
        answer_vocab=answer_index(answers),
        load_masks=train and get_task(config.model.task).needs_masks,
        cache_mb=config.data.cache_images_mb,
    )
    transform = build_transforms(config.transforms, train=train)
    if config.data.group_by_image:
        return GroupedByImageDataset(
            records, transform, max_queries_per_image=config.data.max_queries_per_image, **kwargs
        )
    return GroundingTorchDataset(records, transform, **kwargs)


def make_loader(
    dataset: Any,
    vocab: Vocabulary,
    config: Config,
    run: RunConfig,
    *,
    batch_size: int,
    sampler: Any = None,
    drop_last: bool = False,
    seed: int = 0,
    persistent: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`~langground.types.Batch`; ``batch_size`` counts the dataset's items (images
    with ``data.group_by_image``). Batches carry phrase queries when the task uses them."""
    from langground.data.collate import GroundingCollator

    workers = run.num_workers
    phrases = get_task(config.model.task).uses_phrases
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=GroundingCollator(vocab, config.data.max_text_length, phrases=phrases),
        pin_memory=False,
        worker_init_fn=_worker_init if workers > 0 else None,
        # An explicit generator: creating an iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=persistent and workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )


# --------------------------------------------------------------------------------------------------
# curriculum


def item_lengths(records: Sequence[GroundingRecord], dataset: Any) -> list[int]:
    """Length of each item of the training ``dataset``, for the length curriculum:
    ``dataset.item_lengths()`` when it defines one (an item may hold every expression of one image:
    ``data.group_by_image``), else the word count of each record's text (one item per record)."""
    own = getattr(dataset, "item_lengths", None)
    if callable(own):
        return [int(n) for n in own()]
    return [len(records[i].text.split()) for i in range(len(records))]
