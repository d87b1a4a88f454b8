"""Export a headkit save, one module per target: `transformers` (one head as its plain
`AutoModelFor*` checkpoint, written only when its outputs match ours), `onnx` (every head in one
graph, optionally with an int8 copy whose error is measured: `quantize`) and
`sentence_transformers` (an embedding head as a SentenceTransformer folder). `common` holds what both
share: the merged model, probe inputs, the output guard and the result."""

from headkit.ship.export.common import ExportResult, load_merged, probe_inputs
from headkit.ship.export.onnx import export_onnx
from headkit.ship.export.sentence_transformers import export_sentence_transformers
from headkit.ship.export.transformers import check_parity, export_transformers, to_transformers_model

__all__ = [
    "ExportResult",
    "check_parity",
    "export_onnx",
    "export_sentence_transformers",
    "export_transformers",
    "load_merged",
    "probe_inputs",
    "to_transformers_model",
]
