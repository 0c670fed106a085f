"""CLEVR VQA layout (``questions/CLEVR_{split}_questions.json``, images ``images/{split}/``) and the
CLEVR-layout ``questions.json`` of the synthetic world (one file, a ``split`` field on each question).

Questions have ``question``, ``answer`` (a string; absent on CLEVR test), ``program`` (nodes with
``function`` / ``inputs`` / ``value_inputs``), ``question_family_index`` (CLEVR) or ``question_family``
(synth). CLEVR train has 700k questions: each is compacted while the JSON is parsed, and identical
program nodes are shared, so the index stays a few hundred bytes per question.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import (
    ALL_SPLITS,
    Collector,
    DatasetProtocol,
    RecordDataset,
    check_split,
    register_dataset,
)
from langground.data.coco import read_json
from langground.data.images import image_size
from langground.data.protocols import CLEVR
from langground.errors import DataError
from langground.types import GroundingRecord

CLEVR_SIZE = (320, 480)  # (H, W) of every CLEVR / CLEVR-Ref+ image
CLEVR_SPLITS = ("train", "val", "test")

# CLEVR reports accuracy per question type, named by the program's last function (Johnson et al.).
_QUESTION_TYPES = {
    "count": "count",
    "exist": "exist",
    "equal_integer": "compare_number",
    "less_than": "compare_number",
    "greater_than": "compare_number",
    **{f"query_{a}": "query_attribute" for a in ("color", "shape", "size", "material")},
    **{f"equal_{a}": "compare_attribute" for a in ("color", "shape", "size", "material")},
}


def question_type(program: list[dict[str, Any]] | None) -> str | None:
    """CLEVR question type (count / exist / compare_number / query_attribute / compare_attribute)."""
    if not program:
        return None
    last = program[-1]
    fn = str(last.get("function", last.get("type", "")))
    return _QUESTION_TYPES.get(fn, fn.split("_")[0] if fn else None)


# -- compact program nodes ------------------------------------------------------------------------
_STD_NODE = frozenset({"inputs", "function", "value_inputs"})


class ProgramCodec:
    """Programs as tuples of shared, hashable nodes; ``decode`` gives back the JSON dicts."""

    def __init__(self) -> None:
        self._nodes: dict[Any, Any] = {}

    def _freeze(self, v: Any) -> Any:
        if isinstance(v, dict):
            return ("d", tuple((k, self._freeze(x)) for k, x in v.items()))
        if isinstance(v, list):
            return ("l", tuple(self._freeze(x) for x in v))
        return v

    def encode_node(self, node: Any) -> Any:
        if isinstance(node, dict) and node.keys() == _STD_NODE:
            key: Any = ("s", node["function"], tuple(node["inputs"]), tuple(node["value_inputs"]))
        else:
            key = self._freeze(node)
        try:
            return self._nodes.setdefault(key, key)
        except TypeError:  # unhashable leftovers: keep the node itself
            return node

    def encode(self, program: Any) -> tuple[Any, ...] | None:
        if program is None:
            return None
        if not isinstance(program, list):
            raise ValueError(f"program is a {type(program).__name__}, expected a list of nodes")
        return tuple(self.encode_node(n) for n in program)

    @classmethod
    def _thaw(cls, v: Any) -> Any:
        if isinstance(v, tuple) and v and v[0] == "d":
            return {k: cls._thaw(x) for k, x in v[1]}
        if isinstance(v, tuple) and v and v[0] == "l":
            return [cls._thaw(x) for x in v[1]]
        return v

    @classmethod
    def decode(cls, program: tuple[Any, ...] | None) -> list[dict[str, Any]] | None:
        if program is None:
            return None
        out = []
        for n in program:
            if isinstance(n, tuple) and n and n[0] == "s":
                out.append({"function": n[1], "inputs": list(n[2]), "value_inputs": list(n[3])})
            else:
                out.append(cls._thaw(n))
        return out


def answer_text(a: Any) -> str | None:
    """Answers as strings, the way CLEVR stores them (``True`` -> ``"yes"``, ``3`` -> ``"3"``)."""
    if a is None:
        return None
    if isinstance(a, bool):
        return "yes" if a else "no"
    return str(a)


class QuestionsDataset(RecordDataset):
    """VQA records: no boxes, an answer, a program and a family per question."""

    layout = "clevr"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        protocol: DatasetProtocol,
        image_dirs: list[Path],
        files: list[Path],
        questions: dict[str, list[Any]],
        split_names: list[str],
        image_path_fn: Callable[[str, str], Path],
        size_fn: Callable[[int, str, Path, bool], tuple[int, int]],
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=image_dirs,
            task="vqa",
            files=files,
        )
        q = questions
        self.qids = np.asarray(q["qid"], np.int64)
        self.image_index = np.asarray(q["image_index"], np.int64)
        self.split_names = split_names
        code = {s: i for i, s in enumerate(split_names)}
        self.qsplit = np.asarray([code[s] for s in q["split"]], np.uint8)
        self.texts: list[str] = q["text"]
        self.answers: list[str | None] = q["answer"]
        self.families: list[str | None] = q["family"]
        self.programs: list[Any] = q["program"]
        self.image_files: list[str] = q["image_filename"]
        self._image_path = image_path_fn
        self._size = size_fn

    def __len__(self) -> int:
        return len(self.qids)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        split = self.split_names[int(self.qsplit[i])]
        path = self._image_path(split, self.image_files[i])
        qid = int(self.qids[i])
        index = int(self.image_index[i])
        program = ProgramCodec.decode(self.programs[i])
        meta: dict[str, Any] = {}
        qtype = question_type(program)
        if qtype:
            meta["question_type"] = qtype
        return GroundingRecord(
            sample_id=str(qid),
            image_id=index,
            image_path=str(path),
            image_size=self._size(index, split, path, resolve_size),
            text=self.texts[i],
            dataset=self.name,
            split=split,
            raw_text=self.texts[i],
            family=self.families[i],
            answer=self.answers[i],
            program=program,
            meta=meta,
        )


def read_questions(
    path: Path, want_split: str | None, default_split: str | None, bad: Collector | None = None
) -> tuple[dict[str, list[Any]], set[str]]:
    """Parse a CLEVR-layout questions file into compact columns (optionally one split only).

    A malformed question raises (``bad`` None or strict) or is skipped and reported to ``bad``.
    """
    bad = bad or Collector(strict=True)
    codec = ProgramCodec()
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("qid", "image_index", "split", "text", "answer", "family", "program", "image_filename")
    }
    seen_splits: set[str] = set()
    count = [0]

    def hook(d: dict[str, Any]) -> Any:
        if "question" not in d or not isinstance(d.get("question"), str):
            return d
        n = count[0]
        count[0] += 1
        qid = d.get("question_index", d.get("question_id", n))
        try:
            return parse(d, qid)
        except DataError as e:
            bad(f"question {qid}", e)
            return None

    def parse(d: dict[str, Any], qid: Any) -> None:
        split = str(d.get("split", default_split or ""))
        if not split:
            raise DataError(f"{path}: question {qid} has no 'split' (expected train/val/testA/...)")
        seen_splits.add(split)
        if want_split not in (None, ALL_SPLITS) and split != want_split:
            return None
        if "image_index" not in d and "image_filename" not in d:
            raise DataError(f"{path}: question {qid}: missing key 'image_index' (expected the scene's index)")
        family = d.get("question_family", d.get("question_family_index"))
        try:
            program = codec.encode(d.get("program"))
            qid, index = int(qid), int(d.get("image_index", -1))
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{path}: question {qid}: {e} (expected integer ids and a list of program nodes)"
            ) from None
        cols["qid"].append(qid)
        cols["image_index"].append(index)
        cols["split"].append(split)
        cols["text"].append(d["question"])
        cols["answer"].append(answer_text(d.get("answer")))
        cols["family"].append(None if family is None else sys.intern(str(family)))
        cols["program"].append(program)
        fname = d.get("image_filename")
        cols["image_filename"].append(None if fname is None else sys.intern(str(fname)))
        return None

    top = read_json(path, hook)
    items = top.get("questions") if isinstance(top, dict) else top
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a 'questions' list (CLEVR layout) or a list of questions")
    for i, x in enumerate(items):
        if x is not None:
            qid = x.get("question_index", i) if isinstance(x, dict) else i
            bad(
                f"question {qid}",
                DataError(f"{path}: question {qid} ({str(x)[:60]!r}) has no 'question' text"),
            )
    return cols, seen_splits


def open_clevr(
    root: Path,
    split: str,
    *,
    name: str = "clevr",
    image_dir: str | Path | None = None,
    image_size_hw: tuple[int, int] = CLEVR_SIZE,
    protocol: DatasetProtocol = CLEVR,
    strict: bool = True,
) -> QuestionsDataset:
    """CLEVR v1.0: ``<root>/questions/CLEVR_{split}_questions.json``, images ``<root>/images/{split}/``."""
    qdir = root / "questions"
    available = sorted(
        p.name[len("CLEVR_") : -len("_questions.json")] for p in qdir.glob("CLEVR_*_questions.json")
    )
    if not available:
        raise DataError(f"{qdir}: no CLEVR_<split>_questions.json files (expected the CLEVR v1.0 layout)")
    check_split(split, available, qdir)
    splits = available if split == ALL_SPLITS else [split]
    cols: dict[str, list[Any]] = {}
    files = []
    bad = Collector(strict)
    for s in splits:
        path = qdir / f"CLEVR_{s}_questions.json"
        part, _ = read_questions(path, None, s, bad)
        part["split"] = [s] * len(part["qid"])  # the file name is the truth
        for k, v in part.items():
            cols.setdefault(k, []).extend(v)
        files.append(path)
    for i, f in enumerate(cols["image_filename"]):
        if f is None:
            cols["image_filename"][i] = f"CLEVR_{cols['split'][i]}_{cols['image_index'][i]:06d}.png"
    base = Path(image_dir) if image_dir else root / "images"

    def size_fn(index: int, split: str, path: Path, resolve: bool) -> tuple[int, int]:
        return image_size_hw

    ds = QuestionsDataset(
        root=root,
        name=name,
        split=split,
        protocol=protocol,
        image_dirs=[base / s for s in splits],
        files=files,
        questions=cols,
        split_names=sorted(set(splits)),
        image_path_fn=lambda s, f: base / s / f,
        size_fn=size_fn,
    )
    ds.index_problems.extend(bad.problems)
    return ds


def header_size_fn(index: int, split: str, path: Path, resolve: bool) -> tuple[int, int]:
    return image_size(path, f"image {index}") if resolve else (0, 0)


register_dataset(
    "clevr",
    layout="clevr",
    opener=open_clevr,
    detect=lambda root: any((root / "questions").glob("CLEVR_*_questions.json")),
    description="CLEVR v1.0 VQA questions (train/val/test), accuracy per question type",
    protocol=CLEVR,
)
