"""What ``langground serve`` is configured with: one dataclass, validated once, shared by the app parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from langground.errors import LanggroundError

#: environment variable read when ``--api-key`` is not given
API_KEY_ENV = "LANGGROUND_API_KEY"


@dataclass
class ServeSettings:
    """Limits and options of one served model.

    Attributes:
        checkpoint: the checkpoint served (its hash and model name go to ``GET /v1/model``); None when a
            Grounder built in Python is served.
        max_batch: (image, expression) pairs per forward pass; concurrent requests are merged up to it.
        max_wait_ms: how long the first queued request waits for others to join its forward pass.
        api_key: when set, ``/v1/*`` and ``/metrics`` require ``Authorization: Bearer <api_key>``.
        allow_paths: folders whose images JSON requests may name by local path (none: paths refused).
        max_body_bytes: request bodies above this are refused (413) before they are read in full.
        max_pixels: images with more pixels are refused (413) from their header, before decoding;
            PIL's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) also answers 413.
        max_explain_pixels: ``explain`` requests on larger images are refused (413): their attention maps
            are float arrays of the image's size, per word and stage.
        max_expressions: expressions (or questions) per request.
        max_expression_chars: characters per expression.
        attention_stages: ``explain`` returns the attention maps of this many last stages.
        attention_side: longest side of each returned attention map (PNG), in pixels.
        warmup: run one forward pass at start-up (also finds out whether the model can ``explain``).
    """

    checkpoint: Path | None = None
    max_batch: int = 8
    max_wait_ms: float = 5.0
    api_key: str | None = None
    allow_paths: list[Path] = field(default_factory=list)
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_explain_pixels: int = 1_000_000
    max_expressions: int = 16
    max_expression_chars: int = 300
    attention_stages: int = 2
    attention_side: int = 160
    warmup: bool = True

    def __post_init__(self) -> None:
        positive = {
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_explain_pixels": self.max_explain_pixels,
            "max_expressions": self.max_expressions,
            "max_expression_chars": self.max_expression_chars,
            "attention_stages": self.attention_stages,
            "attention_side": self.attention_side,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise LanggroundError(f"serve setting {name}={value}: expected a positive integer")
        if self.max_wait_ms < 0:
            raise LanggroundError(f"serve setting max_wait_ms={self.max_wait_ms}: expected >= 0")
        self.allow_paths = [Path(p) for p in self.allow_paths]
        for p in self.allow_paths:
            if not p.is_dir():
                raise LanggroundError(f"--allow-path {p}: not a directory")
        self.allow_paths = [p.resolve() for p in self.allow_paths]
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
