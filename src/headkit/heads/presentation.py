"""Presentation: a head's predictions for a person, a table or a transformers pipeline (the
part `view`). The defaults show a prediction as it is; head types whose predictions read
better another way define their view in their file."""

from __future__ import annotations

import json
from typing import Any

from headkit.heads.part import Part


class View(Part):
    writes_text: bool = False  # its predictions are generated text (`headkit generate` answers with it)
    gives_vectors: bool = False  # its predictions are embeddings (`model.encode` answers with them)
    gives_scores: bool = False  # its prediction is a score per input: {"score"} (`model.rank` orders by it)

    def for_text(self, prediction: Any, encoding: Any, text: str) -> Any:
        """A prediction in terms of the text as given (`encoding`: the fast tokenizer's, or None)."""
        return prediction

    def for_image(self, prediction: Any, width: int, height: int) -> Any:
        """A prediction in the coordinates of the image as given (boxes: pixels)."""
        return prediction

    def brief(self, prediction: Any) -> str:
        """One readable line for the CLI."""
        if isinstance(prediction, dict):
            return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in prediction.items())
        return str(prediction)

    def table_cells(self, prediction: Any) -> dict[str, Any]:
        """Flat columns for a CSV of predictions, by suffix of the head's name ("": its own column)."""
        return {"": json.dumps(prediction, ensure_ascii=False)}

    def pipeline_output(self, prediction: Any) -> Any:
        """A prediction (after `for_text`) in the form transformers pipelines give for this task."""
        return prediction
