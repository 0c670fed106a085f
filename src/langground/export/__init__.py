"""Export checkpoints to ONNX (``langground export``): graph + metadata sidecar + parity check.

:func:`export_checkpoint` is the entry point; :mod:`.sidecar` the metadata file, :mod:`.parity` the
onnxruntime-vs-PyTorch check, :mod:`.rewrite` the trace-time fixes, :mod:`.gated` LADS's subnets.
"""

from langground.export.onnx import DEFAULT_OPSET, ExportError, ExportResult, export_checkpoint
from langground.export.parity import DEFAULT_TOLERANCE, ParityError, ParityReport, check_parity
from langground.export.sidecar import OnnxMetadata, read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportError",
    "ExportResult",
    "OnnxMetadata",
    "ParityError",
    "ParityReport",
    "check_parity",
    "export_checkpoint",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]
