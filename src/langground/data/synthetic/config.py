"""``SynthConfig``: every knob of the synthetic world, validated, plus the image -> split assignment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from langground.errors import LanggroundError

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB", "cogentB")

EXPRESSION_FAMILIES: tuple[str, ...] = ("attribute", "relation", "ordinal", "same_attribute", "multi")
NO_TARGET_FAMILIES: tuple[str, ...] = ("absent", "false_relation")
QUESTION_FAMILIES: tuple[str, ...] = (
    "exist",
    "count",
    "query_color",
    "query_shape",
    "query_size",
    "query_material",
    "compare_count",
)

# Random-stream ids under the world seed: image i uses spawn key (_IMAGE_STREAM, i).
_SPLIT_STREAM = 0
_IMAGE_STREAM = 1


@dataclass
class SynthConfig:
    """Configuration of a synthetic world; the world is a pure function of it.

    Attributes:
        images: number of images.
        seed: world seed; image ``i`` draws from ``SeedSequence(seed, spawn_key=(1, i))``.
        size: ``(width, height)`` in pixels.
        min_objects / max_objects: objects per scene (uniform); split ``testB`` draws its crowded scenes
            from ``[crowded_min_objects, max_objects]``.
        no_target_rate: fraction of referring expressions that refer to nothing.
        cogent: draw train/val/testA/testB under CoGenT condition A and add split ``cogentB``.
        split_fractions: fraction of images per split (must sum to 1; ``cogentB`` is dropped and the
            rest renormalised when ``cogent`` is False).
        expressions_per_image / questions_per_image: how many the generators aim for per image.
        family_weights: relative frequency of expression families (positive ones among positives,
            no-target ones among no-targets).
        relation_margin_x: left/right needs the centres' x to differ by more than this fraction of the width.
        relation_margin_depth: front/behind needs camera depths to differ by more than this (world units).
        min_visible_fraction / min_visible_pixels: every object keeps at least this fraction of its
            silhouette and this many pixels (at 320x240; scaled with the image area) visible.
        max_ordinal: largest ordinal used ("the fourth ... from the left").
        png_compress_level: zlib level of the written PNGs (speed vs size; bytes stay deterministic).
    """

    images: int = 2000
    seed: int = 0
    size: tuple[int, int] = (320, 240)
    min_objects: int = 3
    max_objects: int = 10
    crowded_min_objects: int = 8
    no_target_rate: float = 0.1
    cogent: bool = True
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.70, "val": 0.10, "testA": 0.10, "testB": 0.05, "cogentB": 0.05}
    )
    expressions_per_image: int = 8
    questions_per_image: int = 6
    family_weights: dict[str, float] = field(
        default_factory=lambda: {f: 1.0 for f in EXPRESSION_FAMILIES + NO_TARGET_FAMILIES}
    )
    relation_margin_x: float = 0.05
    relation_margin_depth: float = 0.45
    min_visible_fraction: float = 0.4
    min_visible_pixels: int = 120
    max_ordinal: int = 4
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.split_fractions = dict(self.split_fractions)
        self.family_weights = dict(self.family_weights)
        self.validate()

    def validate(self) -> None:
        """Raise ``LanggroundError`` naming the first field that is out of range."""

        def bad(name: str, value: Any, expected: str) -> LanggroundError:
            return LanggroundError(f"SynthConfig.{name}={value!r}: expected {expected}")

        if self.images < 1:
            raise bad("images", self.images, "at least 1")
        w, h = self.size
        if w < 64 or h < 48 or w > 4096 or h > 4096:
            raise bad("size", self.size, "(width, height) between 64x48 and 4096x4096")
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise bad(
                "min_objects/max_objects", (self.min_objects, self.max_objects), "1 <= min <= max <= 10"
            )
        if not 0.0 <= self.no_target_rate <= 1.0:
            raise bad("no_target_rate", self.no_target_rate, "a number in [0, 1]")
        unknown = set(self.split_fractions) - set(SPLITS)
        if unknown:
            raise bad("split_fractions", sorted(unknown), f"split names among {list(SPLITS)}")
        if any(v < 0 for v in self.split_fractions.values()):
            raise bad("split_fractions", self.split_fractions, "non-negative fractions")
        if abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise bad("split_fractions", self.split_fractions, "fractions summing to 1")
        unknown = set(self.family_weights) - set(EXPRESSION_FAMILIES + NO_TARGET_FAMILIES)
        if unknown or any(v < 0 for v in self.family_weights.values()):
            raise bad("family_weights", self.family_weights, "non-negative weights of known families")
        if sum(self.family_weights.get(f, 0.0) for f in EXPRESSION_FAMILIES) <= 0:
            raise bad("family_weights", self.family_weights, "a positive weight for some target family")
        if self.no_target_rate > 0 and sum(self.family_weights.get(f, 0.0) for f in NO_TARGET_FAMILIES) <= 0:
            raise bad("family_weights", self.family_weights, "a positive weight for a no-target family")
        if self.expressions_per_image < 1 or self.questions_per_image < 0:
            raise bad("expressions_per_image", self.expressions_per_image, "at least 1")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise bad("min_visible_fraction", self.min_visible_fraction, "a fraction in (0, 1]")
        if not 0 <= self.png_compress_level <= 9:
            raise bad("png_compress_level", self.png_compress_level, "an integer 0..9")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    # --- derived quantities -------------------------------------------------------------------------

    def active_fractions(self) -> dict[str, float]:
        """Split fractions in effect: without CoGenT there is no ``cogentB`` and the rest is renormalised."""
        fr = {s: float(self.split_fractions.get(s, 0.0)) for s in SPLITS}
        if not self.cogent:
            fr.pop("cogentB")
            total = sum(fr.values())
            if total <= 0:
                raise LanggroundError(
                    f"SynthConfig.split_fractions={self.split_fractions!r}: expected some weight outside cogentB"
                )
            fr = {s: v / total for s, v in fr.items()}
        return fr

    def split_counts(self) -> dict[str, int]:
        """Images per split by largest remainder, so the counts sum to ``images`` exactly."""
        fr = self.active_fractions()
        raw = {s: f * self.images for s, f in fr.items()}
        counts = {s: int(np.floor(v)) for s, v in raw.items()}
        left = self.images - sum(counts.values())
        for s in sorted(raw, key=lambda s: (-(raw[s] - counts[s]), list(raw).index(s)))[:left]:
            counts[s] += 1
        return counts

    def split_assignment(self) -> list[str]:
        """The split of every image index: a seeded permutation of the per-split counts."""
        labels = [s for s, n in self.split_counts().items() for _ in range(n)]
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_SPLIT_STREAM,)))
        order = rng.permutation(len(labels))
        return [labels[i] for i in order]

    def condition(self, split: str) -> str | None:
        """CoGenT condition of a split: A everywhere but ``cogentB``; None without CoGenT."""
        if not self.cogent:
            return None
        return "B" if split == "cogentB" else "A"

    def object_range(self, split: str) -> tuple[int, int]:
        if split == "testB":
            return max(self.min_objects, min(self.crowded_min_objects, self.max_objects)), self.max_objects
        return self.min_objects, self.max_objects

    def min_visible_px(self) -> int:
        """``min_visible_pixels`` scaled from 320x240 to this image size (at least 4 pixels)."""
        w, h = self.size
        return max(4, int(round(self.min_visible_pixels * (w * h) / (320 * 240))))

    def image_seed(self, index: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=(_IMAGE_STREAM, index))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynthConfig:
        d = dict(d)
        if "size" in d:
            d["size"] = tuple(d["size"])
        return cls(**d)
