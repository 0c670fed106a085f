"""Flickr30k Entities raw layout: ``Sentences/<id>.txt``, ``Annotations/<id>.xml``, ``{train,val,test}.txt``.

A sentence line marks phrases as ``[/EN#<chain>/<type>[/<type>...] words]``; the XML (VOC-like,
1-based pixel boxes) gives each chain zero or more boxes (one ``<object>`` may name several chains),
or ``nobndbox`` / ``scene`` flags. Boxes follow the official ``flickr30k_entities_utils.get_annotations``:
all four coordinates minus 1 (so they equal the boxes in the TransVG/MDETR files). Two protocols:
``boxes="merged"`` (default; one union box, LaConvNet Sec. 5.1) and ``boxes="separate"`` (all boxes;
a prediction that hits any of them is correct).

``task`` picks the records (``open_kwargs: {task: phrase}``):
- ``rec`` (default): every phrase whose chain has boxes is one record, text = the phrase;
- ``phrase``: one record per caption, text = the plain caption, ``phrases`` = its phrases whose chain has
  boxes (``span`` = character offsets in the caption, ``boxes`` merged or separate as above,
  ``phrase_id`` = the chain, ``family`` = its first type). Phrases without a box (``scene``,
  ``nobndbox``, ``notvisual``) are NOT queries, as in the rec mode and the benchmark's evaluation (only
  phrases with boxes are scored); they are counted in ``skipped``. Captions with no such phrase are
  skipped (``skipped["no_phrase_caption"]``);
- ``retrieval``: one record per caption, every caption (five per image), phrases attached as for
  ``phrase``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
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
from langground.data.captions import caption_protocol, distinct_boxes, union_box
from langground.data.images import pick_image_dir
from langground.data.protocols import FLICKR_MERGED, FLICKR_SEPARATE
from langground.errors import DataError
from langground.tasks import get_task
from langground.types import GroundingRecord, Phrase

_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)*)\s+([^\]]*)\]")
_IMAGE_DIRS = ("flickr30k_images", "flickr30k-images", "images", "../flickr30k_images", "../flickr30k-images")
TASKS = ("rec", "phrase", "retrieval")
# One entry per phrase whose chain has boxes.
_COLUMNS = ("image", "sentence", "phrase_index", "text", "family", "chain", "types", "first_word", "span")


def parse_sentence(line: str) -> tuple[str, list[dict[str, Any]]]:
    """``(plain sentence, [{phrase, chain, types, first_word_index, span}])`` of one annotated line;
    ``span`` = the phrase's ``(start, end)`` character offsets in the plain sentence."""
    phrases = []
    words: list[str] = []
    pos = 0
    for m in _PHRASE.finditer(line):
        words += line[pos : m.start()].split()
        phrase_words = m.group(3).split()
        start = len(" ".join(words)) + (1 if words else 0)
        phrases.append(
            {
                "phrase": " ".join(phrase_words),
                "chain": m.group(1),
                "types": [t for t in m.group(2).split("/") if t],
                "first_word_index": len(words),
                "span": (start, start + len(" ".join(phrase_words))),
            }
        )
        words += phrase_words
        pos = m.end()
    words += line[pos:].split()
    return " ".join(words), phrases


def parse_annotation(
    path: Path,
) -> tuple[dict[str, list[list[float]]], set[str], set[str], tuple[int, int], str | None]:
    """``(boxes per chain, nobox chains, scene chains, (H, W), filename)`` of one Annotations XML."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise DataError(f"{path}: invalid XML ({e}); expected a Flickr30k Entities annotation") from None
    size = root.find("size")
    try:
        hw = (int(size.findtext("height")), int(size.findtext("width")))  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: missing <size><width>/<height> (expected a VOC-like annotation)") from None
    boxes: dict[str, list[list[float]]] = {}
    nobox: set[str] = set()
    scene: set[str] = set()
    for obj in root.findall("object"):
        names = [n.text.strip() for n in obj.findall("name") if n.text]
        bb = obj.find("bndbox")
        if bb is not None:
            try:
                # 1-based pixel indices -> minus 1 on all four, as the official toolkit does.
                b = [float(bb.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: object {names}: <bndbox> needs numeric xmin/ymin/xmax/ymax"
                ) from None
            for n in names:
                boxes.setdefault(n, []).append(b)
            continue
        for n in names:
            if (obj.findtext("nobndbox") or "0").strip() not in ("", "0"):
                nobox.add(n)
            if (obj.findtext("scene") or "0").strip() not in ("", "0"):
                scene.add(n)
    return boxes, nobox, scene, hw, root.findtext("filename")


class Flickr30kDataset(RecordDataset):
    layout = "flickr30k"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        merged: bool,
        rows: dict[str, list[Any]],
        images: list[tuple[str, str, tuple[int, int], list[str]]],
        box_off: np.ndarray,
        box_flat: np.ndarray,
        image_dir: Path,
        candidates: list[Path],
        files: list[Path],
        skipped: dict[str, int],
        protocol: DatasetProtocol,
        task: str = "rec",
        captions: list[tuple[int, int, int, int]] | None = None,
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=candidates,
            task=task,
            files=files,
        )
        # Caption modes: (image row, sentence index, first phrase row, end phrase row) per record.
        self.captions = captions
        self.merged = merged
        self.rows = rows
        self.images = images  # (image id, split, (H, W), sentences)
        self.box_off = box_off
        self.box_flat = box_flat
        self.image_dir = image_dir
        self.skipped = skipped
        self.split_names = sorted({im[1] for im in images}) or [split]

    def __len__(self) -> int:
        return len(self.rows["image"]) if self.captions is None else len(self.captions)

    def _boxes(self, i: int) -> np.ndarray:
        boxes = self.box_flat[self.box_off[i] : self.box_off[i + 1]]
        return (union_box(boxes) if self.merged else boxes).astype(np.float32, copy=True)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        if self.captions is not None:
            return self._caption(i)
        r = self.rows
        image_id, split, size, sentences = self.images[r["image"][i]]
        boxes = self._boxes(i)
        s = r["sentence"][i]
        return GroundingRecord(
            sample_id=f"{image_id}/{s}/{r['phrase_index'][i]}",
            image_id=image_id,
            image_path=str(self.image_dir / f"{image_id}.jpg"),
            image_size=size,
            text=r["text"][i],
            boxes=boxes,
            dataset=self.name,
            split=split,
            raw_text=r["text"][i],
            family=r["family"][i],
            ref_id=r["chain"][i],
            meta={
                "sentence": sentences[s],
                "sentence_index": s,
                "first_word_index": r["first_word"][i],
                "phrase_types": r["types"][i],
                "n_boxes": int(self.box_off[i + 1] - self.box_off[i]),
            },
        )

    def _caption(self, c: int) -> GroundingRecord:
        """Caption record ``c``: the plain sentence and its phrases with boxes."""
        image_row, s, first, end = self.captions[c]  # type: ignore[index]
        image_id, split, size, sentences = self.images[image_row]
        r = self.rows
        phrases = tuple(
            Phrase(
                span=tuple(r["span"][i]),
                boxes=self._boxes(i),
                phrase_id=str(r["chain"][i]),
                family=r["family"][i],
            )
            for i in range(first, end)
        )
        return GroundingRecord(
            sample_id=f"{image_id}/{s}",
            image_id=image_id,
            image_path=str(self.image_dir / f"{image_id}.jpg"),
            image_size=size,
            text=sentences[s],
            boxes=distinct_boxes(phrases),
            dataset=self.name,
            split=split,
            raw_text=sentences[s],
            phrases=phrases,
            meta={"sentence_index": s, "phrase_types": [r["types"][i] for i in range(first, end)]},
        )


def open_flickr30k(
    root: Path,
    split: str,
    *,
    name: str = "flickr30k",
    boxes: str = "merged",
    image_dir: str | Path | None = None,
    protocol: DatasetProtocol | None = None,
    strict: bool = True,
    task: str = "rec",
) -> Flickr30kDataset:
    if boxes not in ("merged", "separate"):
        raise DataError(f"unknown Flickr30k box protocol {boxes!r}; expected 'merged' or 'separate'")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} for Flickr30k Entities; expected one of {', '.join(TASKS)}")
    for sub in ("Annotations", "Sentences"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: folder not found (expected the Flickr30k Entities layout)")
    available = sorted(s for s in ("train", "val", "test") if (root / f"{s}.txt").is_file())
    if not available:
        raise DataError(f"{root}: no train.txt/val.txt/test.txt split lists (Flickr30k Entities layout)")
    check_split(split, available, root)
    splits = available if split == ALL_SPLITS else [split]
    spec = get_task(task)
    by_caption = spec.record_unit == "caption"  # phrase / retrieval: one record per caption
    rows: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
    captions: list[tuple[int, int, int, int]] = []
    images: list[tuple[str, str, tuple[int, int], list[str]]] = []
    offs = [0]
    flat: list[list[float]] = []
    skipped = {"no_box": 0, "scene": 0, "not_visual": 0}
    if spec.uses_phrases:
        skipped["no_phrase_caption"] = 0
    bad = Collector(strict)
    for s in splits:
        ids = [x.strip() for x in (root / f"{s}.txt").read_text().split() if x.strip()]
        for image_id in ids:
            spath = root / "Sentences" / f"{image_id}.txt"
            try:
                chain_boxes, nobox, scene, hw, _ = parse_annotation(root / "Annotations" / f"{image_id}.xml")
                lines = [ln for ln in spath.read_text(encoding="utf-8").splitlines() if ln.strip()]
            except FileNotFoundError:
                bad(
                    f"image {image_id}",
                    DataError(f"{spath}: sentence file not found (image {image_id} is in {s}.txt)"),
                )
                continue
            except UnicodeDecodeError as e:
                bad(
                    f"image {image_id}",
                    DataError(f"{spath}: not UTF-8 text ({e.reason}); expected sentence lines"),
                )
                continue
            except DataError as e:
                bad(f"image {image_id}", e)
                continue
            sentences = []
            row = len(images)
            for si, line in enumerate(lines):
                sentence, phrases = parse_sentence(line)
                sentences.append(sentence)
                first = len(rows["image"])
                for pi, p in enumerate(phrases):
                    chain = p["chain"]
                    if chain == "0":
                        skipped["not_visual"] += 1
                        continue
                    if chain not in chain_boxes:
                        skipped["scene" if chain in scene else "no_box"] += 1
                        continue
                    rows["image"].append(row)
                    rows["sentence"].append(si)
                    rows["phrase_index"].append(pi)
                    rows["text"].append(p["phrase"])
                    rows["family"].append(p["types"][0] if p["types"] else None)
                    rows["chain"].append(int(chain))
                    rows["types"].append(p["types"])
                    rows["first_word"].append(p["first_word_index"])
                    rows["span"].append(p["span"])
                    flat.extend(chain_boxes[chain])
                    offs.append(len(flat))
                end = len(rows["image"])
                if by_caption and (end > first or not spec.uses_phrases):
                    captions.append((row, si, first, end))
                elif by_caption:
                    skipped["no_phrase_caption"] += 1
            images.append((image_id, s, hw, sentences))
    candidates = [root / d for d in _IMAGE_DIRS]
    chosen = Path(image_dir) if image_dir else pick_image_dir(candidates, (f"{im[0]}.jpg" for im in images))
    merged = boxes == "merged"
    if protocol is None or protocol.box_match != ("merged" if merged else "any"):
        protocol = FLICKR_MERGED if merged else FLICKR_SEPARATE  # `boxes` decides how phrases are scored
    if task != "rec":
        protocol = caption_protocol(protocol, task)
    ds = Flickr30kDataset(
        root=root,
        name=name,
        split=split,
        merged=merged,
        rows=rows,
        images=images,
        box_off=np.asarray(offs, np.int64),
        box_flat=np.asarray(flat, np.float32).reshape(-1, 4),
        image_dir=chosen,
        candidates=candidates,
        files=[root / f"{s}.txt" for s in splits],
        skipped=skipped,
        protocol=protocol,
        task=task,
        captions=captions if by_caption else None,
    )
    ds.index_problems.extend(bad.problems)
    return ds


def _detect(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "Sentences").is_dir()


register_dataset(
    "flickr30k",
    layout="flickr30k",
    opener=open_flickr30k,
    detect=_detect,
    description="Flickr30k Entities phrases, merged protocol (one union box per phrase); "
    "task=phrase|retrieval: one record per caption",
    protocol=FLICKR_MERGED,
)
register_dataset(
    "flickr30k-separate",
    layout="flickr30k",
    opener=open_flickr30k,
    detect=_detect,
    description="Flickr30k Entities phrases, separate protocol (any of the phrase's boxes)",
    protocol=FLICKR_SEPARATE,
    boxes="separate",
)
