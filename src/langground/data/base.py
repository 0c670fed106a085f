"""The one entry point to every on-disk layout: ``open_dataset(root, name, split)``.

Each layout module registers its dataset names with :func:`register_dataset`; the returned
:class:`RecordDataset` is a lazy, Sequence-like index: it keeps compact arrays/lists and builds a
:class:`~langground.types.GroundingRecord` only in ``__getitem__``; masks decode only when a record's
``load_mask()`` is called.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from langground.errors import DataError
from langground.types import GroundingRecord

ALL_SPLITS = "all"


@dataclass(frozen=True)
class DatasetProtocol:
    """How the papers evaluate a benchmark, recorded next to the loader that reads it.

    Attributes:
        benchmark: the benchmark's name as papers print it (e.g. ``"RefCOCO (UNC splits)"``).
        tasks: the tasks it is used for, a subset of ``langground.types.TASKS``.
        metrics: per task, the metric names to report, in the order the papers print them.
        input_size: per task, the square input resolution the papers use (LaConvNet: 416 REC,
            320 RES, 224 VQA; ReLA 480 for gRefCOCO).
        splits: the official split names; ``eval_splits`` the ones results tables report.
        box_match: how an expression with K > 1 boxes is scored: ``"single"`` (K = 1), ``"merged"``
            (Flickr30k merged protocol: one union box), ``"any"`` (Flickr30k separate protocol: a hit on
            any box counts), ``"all"`` (gRefCOCO: one-to-one matching, correct only when F1 = 1).
        notes: conventions a reader of the results must know (box rounding, thresholds, ...).
    """

    benchmark: str
    tasks: tuple[str, ...]
    metrics: Mapping[str, tuple[str, ...]]
    input_size: Mapping[str, int]
    splits: tuple[str, ...]
    eval_splits: tuple[str, ...]
    box_match: str = "single"
    notes: str = ""

    def describe(self, task: str | None = None) -> str:
        """One line for evaluation output: benchmark, metrics, resolution, conventions."""
        task = task or self.tasks[0]
        metrics = ", ".join(self.metrics.get(task, ()))
        size = self.input_size.get(task)
        text = f"{self.benchmark} [{task}]: {metrics}" + (f" at {size}x{size}" if size else "")
        text += f"; eval splits {'/'.join(self.eval_splits)}"
        return text + (f"; {self.notes}" if self.notes else "")


@dataclass
class Problem:
    """One thing wrong with a dataset, found while indexing or checking it."""

    kind: str
    item: str
    message: str


MALFORMED = "malformed entry"


class Collector:
    """Where a loader sends a malformed entry (a ref, a question, a tuple, an XML file).

    ``strict``: the DataError is raised at once (training stops at the first bad entry, with one line
    naming the file, the entry and what was expected). Otherwise the entry is skipped and the error
    kept in ``problems``, so ``langground data check`` lists every bad entry instead of the first.
    """

    def __init__(self, strict: bool, problems: list[Problem] | None = None) -> None:
        self.strict = strict
        self.problems: list[Problem] = [] if problems is None else problems

    def __call__(self, item: str, error: DataError) -> None:
        if self.strict:
            raise error
        self.problems.append(Problem(MALFORMED, item, str(error)))


class RecordDataset(Sequence[GroundingRecord]):
    """A lazy index of one split (or ``"all"`` splits) of one dataset.

    Subclasses keep compact columns and implement ``__len__`` and ``_record(i, resolve_size)``.
    ``resolve_size=False`` lets ``data stats`` skip reading image headers for layouts that do not
    store image sizes (the record then has ``image_size == (0, 0)``).
    """

    layout: str = ""

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        protocol: DatasetProtocol,
        image_dirs: Sequence[Path],
        task: str,
        files: Sequence[Path] = (),
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.split = split
        self.protocol = protocol
        self.image_dirs: tuple[Path, ...] = tuple(Path(p) for p in image_dirs)
        self.task = task
        self.files: tuple[Path, ...] = tuple(files)
        # Problems noticed while indexing (duplicate ids, dangling references); `data check` reports them.
        self.index_problems: list[Problem] = []

    # -- Sequence protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> GroundingRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[GroundingRecord]: ...

    def __getitem__(self, i: int | slice) -> GroundingRecord | list[GroundingRecord]:
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(len(self)))]
        return self.get(i)

    def __iter__(self) -> Iterator[GroundingRecord]:
        for i in range(len(self)):
            yield self.get(i)

    def get(self, i: int, *, resolve_size: bool = True) -> GroundingRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} with {n} records")
        return self._record(i % n if n else i, resolve_size)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        raise NotImplementedError

    # -- extras -----------------------------------------------------------------------------------
    #: Layouts that index several splits at once set this to the names present.
    split_names: list[str] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits present in this index."""
        return tuple(self.split_names) if self.split_names is not None else (self.split,)

    def annotation_areas(self) -> Iterator[tuple[str, float, Callable[[], int]]]:
        """``(annotation id, stored area, decoded-area function)`` for layouts that store areas."""
        return iter(())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, task={self.task!r}, n={len(self)})"


# -- registry -------------------------------------------------------------------------------------
Opener = Callable[..., RecordDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset name: which layout reads it, with which fixed keyword arguments."""

    name: str
    layout: str
    opener: Opener
    detect: Callable[[Path], bool]
    description: str
    protocol: DatasetProtocol
    defaults: Mapping[str, Any] = field(default_factory=dict)


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    layout: str,
    opener: Opener,
    detect: Callable[[Path], bool],
    description: str,
    protocol: DatasetProtocol,
    **defaults: Any,
) -> None:
    """Register ``name`` so that ``open_dataset(root, name, split)`` calls ``opener(root, split, ...)``.

    ``protocol`` is how the papers evaluate this benchmark; ``open_dataset`` hands it to the opener, so
    the registration is the one place that says it.
    """
    key = name.lower()
    if key in _DATASETS and _DATASETS[key].opener is not opener:
        raise ValueError(f"dataset {name!r} is registered twice")
    _DATASETS[key] = DatasetSpec(key, layout, opener, detect, description, protocol, dict(defaults))


def _ensure_layouts() -> None:
    # Importing the package runs every layout module's registrations.
    import langground.data  # noqa: F401


def list_datasets() -> list[str]:
    """Every dataset name ``open_dataset`` accepts, sorted."""
    _ensure_layouts()
    return sorted(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    _ensure_layouts()
    key = name.lower()
    if key not in _DATASETS:
        close = difflib.get_close_matches(key, list(_DATASETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; expected one of: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[key]


def detect_datasets(root: str | Path) -> list[str]:
    """Names of the registered datasets whose files are present under ``root``."""
    _ensure_layouts()
    root = Path(root)
    found = []
    for spec in sorted(_DATASETS.values(), key=lambda s: s.name):
        try:
            if spec.detect(root):
                found.append(spec.name)
        except OSError:
            continue
    return found


def open_dataset(root: str | Path, name: str, split: str = ALL_SPLITS, **kw: Any) -> RecordDataset:
    """Open split ``split`` (or ``"all"``) of dataset ``name`` stored under ``root``.

    ``kw`` are layout options (e.g. ``task="vqa"`` for ``synth``, ``image_dir=...`` to point at the
    images, ``strict=False`` to skip malformed entries and keep them in ``index_problems``).
    Raises DataError for an unknown name, a missing/malformed file or an unknown split.
    """
    spec = dataset_spec(name)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is a file, expected a directory")
    options = {"protocol": spec.protocol, **spec.defaults, **kw}
    with _no_cyclic_gc():
        return spec.opener(root, split, name=spec.name, **options)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    # Indexing creates millions of small containers (a RefCOCO pickle alone ~1.5M) and none of them
    # form cycles; the cyclic collector would walk them all again and again (3x the unpickling time).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_split(split: str, available: Sequence[str], where: Path | str) -> None:
    """Raise a one-line DataError when ``split`` is neither ``"all"`` nor one of ``available``."""
    if split != ALL_SPLITS and split not in available:
        have = ", ".join(sorted(available)) or "none"
        raise DataError(f"{where}: unknown split {split!r}; splits present: {have} (or 'all')")
