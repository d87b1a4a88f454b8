"""Bounding-box regression for vision backbones: one box per image.

Boxes are (x1, y1, x2, y2) in coordinates normalised to [0, 1]. The head predicts centre and
size through a sigmoid, so every output is a valid box inside the image. The loss is DETR's
L1 + generalised IoU (Rezatofighi et al. 2019); labels are (B, 4) floats, NaN for missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit.data.files import column_values
from headkit.errors import DataError
from headkit.heads.base import HeadBase, HeadConfig, zero_loss
from headkit.heads.codecs import Codec
from headkit.heads.labels import NAN, LabelSource, rows_with_labels
from headkit.heads.pooling import check_pooling
from headkit.heads.presentation import View
from headkit.heads.scoring import Scoring


@dataclass(frozen=True)
class BoxConfig(HeadConfig):
    type: str = "box"
    dropout: float = 0.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def iou_and_giou(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Element-wise IoU and generalised IoU of two (N, 4) xyxy box sets."""
    top_left = torch.maximum(pred[:, :2], target[:, :2])
    bottom_right = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = box_area(pred) + box_area(target) - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(dim=1)
    giou = iou - (hull - union) / hull.clamp(min=1e-7)
    return iou, giou


BOX_COLUMNS = ("x1", "y1", "x2", "y2")


def _box_columns(where: LabelSource) -> list[str]:
    columns = where.columns() if "," in where.column else list(BOX_COLUMNS)
    if len(columns) != 4:
        raise DataError(f"head '{where.head}': a box needs four columns x1,y1,x2,y2, got {columns}")
    return columns


class BoxCodec(Codec):
    """Rows name image files; the label spec names four pixel-coordinate columns (default
    x1,y1,x2,y2), normalised by each image's size. Images are never centre-cropped: a crop
    would move the boxes."""

    layout = "vector"
    inputs = "images"
    crop_ok = False

    def label_names(self, rows: list[dict[str, Any]], where: LabelSource) -> list[str]:
        return _box_columns(where)

    def encode_labels(
        self, rows: list[dict[str, Any]], where: LabelSource, labels: list[str], image_sizes: list | None
    ) -> np.ndarray:
        """(N, 4) boxes normalised by each image's size; NaN rows where the box is missing.

        A box must satisfy 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height of its own image.
        """
        if image_sizes is None:
            raise DataError(f"head '{where.head}': a box head needs an image backbone and image files")
        values = [column_values(rows, c, where.source) for c in _box_columns(where)]
        out = np.full((len(rows), 4), NAN, dtype=np.float32)
        for i, (width, height) in enumerate(image_sizes):
            cells = [v[i] for v in values]
            if all(c is None or c == "" for c in cells):
                continue
            at = f"{where.source}, row {i + 1}"
            try:
                x1, y1, x2, y2 = (float(c) for c in cells)
            except (TypeError, ValueError) as e:
                raise DataError(f"{at}: box {cells} is not four numbers (leave all four empty for no box)") from e
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise DataError(
                    f"{at}: box (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}) is not inside the {width}x{height} "
                    "image with x1 < x2 and y1 < y2 (pixel coordinates)"
                )
            out[i] = (x1 / width, y1 / height, x2 / width, y2 / height)
        return out

    def references(
        self, labels: Tensor, mask: Tensor | None = None, unseen: Sequence[str] = ()
    ) -> list[list[float] | None]:
        present = rows_with_labels(labels).tolist()
        return [row if ok else None for row, ok in zip(labels.float().tolist(), present, strict=True)]


class BoxScores(Scoring):
    primary = "mean_iou"
    metrics: ClassVar[dict[str, bool]] = {"mean_iou": True, "iou@0.5": True}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r is not None]
        if not pairs:
            return {}
        iou, _ = iou_and_giou(torch.tensor([p for p, _ in pairs]), torch.tensor([r for _, r in pairs]))
        return {"mean_iou": float(iou.mean()), "iou@0.5": float((iou >= 0.5).float().mean())}


class BoxView(View):
    def for_image(self, prediction: Any, width: int, height: int) -> Any:
        """The box in pixels of the image as given."""
        return [round(v * s, 2) for v, s in zip(prediction, (width, height, width, height), strict=True)]


class BoxHead(HeadBase):
    """pool -> MLP -> (centre, size) through a sigmoid -> one xyxy box inside the image."""

    codec = BoxCodec()
    scoring = BoxScores()
    view = BoxView()

    def __init__(self, config: BoxConfig):
        super().__init__()
        check_pooling(config.pooling)
        self.config: BoxConfig = config
        assert config.input_size is not None  # build_head refuses a config without it
        h = config.input_size
        self.mlp = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 4))

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        cx, cy, w, h = self.mlp(pooled).float().sigmoid().unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return boxes.clamp(0.0, 1.0)  # (B, 4) xyxy

    def loss(self, output: Tensor, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, int]:
        present = rows_with_labels(labels)
        n = int(present.sum())
        if n == 0:
            return zero_loss(output), 0
        pred, target = output[present].float(), labels[present].float()
        _, giou = iou_and_giou(pred, target)
        l1 = F.l1_loss(pred, target)
        return self.config.l1_weight * l1 + self.config.giou_weight * (1 - giou).mean(), n

    def decode(self, output: Tensor, mask: Tensor | None = None) -> list[list[float]]:
        return output.float().tolist()
