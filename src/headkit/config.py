"""`MultiHeadConfig`: what a model is, as one JSON-friendly object (`model.config`).

transformers users reach for `model.config` to see what they hold and `config.json` to see what a
repository holds; a headkit model answers both. The config is read off the live model each time
(`MultiHeadModel.config`), so it can never disagree with the heads it describes: the backbone it
sits on (id, revision, architecture), every head's config, the loss weighting, the token limit it
was trained with, and the data columns each head read in training (what `model.evaluate` reads
by default). `save_pretrained` writes it as the save's `config.json`; heads.json stays the file
loading trusts (it holds the checksums), so a hand-edited config.json cannot change a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headkit._fs import atomic_write_json
from headkit.errors import CheckpointError

CONFIG_NAME = "config.json"
CONFIG_FORMAT = "headkit.model"


@dataclass
class MultiHeadConfig:
    """A multi-head model described: see the module docstring. A snapshot: changing it changes no
    model. (transformers' Trainer sets `config.use_cache = False` on the model it trains; that does
    not reach a decoder backbone here, whose own setting is `model.backbone.config.use_cache`.)

    Attributes:
        backbone: the checkpoint the backbone was loaded from (hub id, alias or path; empty if built in memory).
        revision: the hub commit of that checkpoint, when it came from the hub.
        model_type: the backbone's architecture family (transformers' `model_type`).
        hidden_size: the width every pooled head reads.
        heads: head name -> its config (as in heads/NAME/config.json).
        weighting: how the heads' losses are combined (static or uncertainty).
        max_length: the token limit the model was trained with (predict's default), if known.
        columns: head name -> the data columns it read in training ({"label", "text", "text_pair"}).
        headkit_version: the headkit that wrote it.
    """

    backbone: str
    revision: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    weighting: str = "static"
    max_length: int | None = None
    columns: dict[str, dict[str, str | None]] = field(default_factory=dict)
    headkit_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiHeadConfig:
        """Fields this headkit knows; newer ones are ignored (a config from a later version still reads)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_NAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MultiHeadConfig:
        """The config.json of a headkit save (a run directory: of its model/), local or a hub id
        (`org/name[@revision]`, from the hub cache or downloaded)."""
        from headkit.hub import local_path
        from headkit.save_layout import find_save

        folder = local_path(directory)
        found = find_save(folder, with_backbone=False) or folder
        path = found / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise CheckpointError(f"{found} has no {CONFIG_NAME}: it was not written by save_pretrained") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from e
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise CheckpointError(f'{path} is not a headkit model config (expected "format": "{CONFIG_FORMAT}")')
        return cls.from_dict(data)
