"""`from_pretrained` / `save_pretrained` / `push_to_hub` for MultiHeadModel, as transformers names them.

A mixin, so that model.py keeps to the model (adapter, heads, forward) while saving and loading
stay where the save format lives: a headkit save is read back through ship/load.py (which builds
nothing itself), any other checkpoint gives its backbone to new heads. Nothing here imports
headkit.model: the class that inherits these methods is the one they build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headkit.backbone import load_backbone
from headkit.heads import HeadConfig, config_from_dict
from headkit.hub import local_path, push_folder
from headkit.ship.load import read_save, restore, saved_backbone
from headkit.ship.save import find_save, save

HeadConfigs = Mapping[str, HeadConfig | dict[str, Any]]


def head_configs(heads: HeadConfigs | None) -> dict[str, HeadConfig]:
    """Head configs given as dataclasses or as their heads.json dicts."""
    return {h: c if isinstance(c, HeadConfig) else config_from_dict(c) for h, c in (heads or {}).items()}


class PretrainedMixin:
    """Loading and saving for a model built as `cls(backbone, heads, weighting=...)`."""

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        heads: HeadConfigs | None = None,
        weighting: str = "static",
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
    ) -> Any:
        """A model from a local directory or a Hugging Face hub id (`revision`: a branch, tag or commit).

        A headkit save or run (local or on the hub) loads with its heads (and `heads`, if given, are
        added to them); any other checkpoint gives its backbone (its own head is dropped) with `heads`.
        """
        name = f"{model}@{revision}" if revision else str(model)
        saved = find_save(local_path(name))
        if saved is None:
            return cls.on_backbone(name, heads, weighting, trust_remote_code, dtype)
        loaded = cls.from_save(saved, trust_remote_code=trust_remote_code, dtype=dtype)
        for head, config in head_configs(heads).items():
            loaded.add_head(head, config)
        return loaded.eval()

    @classmethod
    def on_backbone(
        cls,
        model: str | os.PathLike,
        heads: HeadConfigs | None = None,
        weighting: str = "static",
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
        processor: Any = None,
    ) -> Any:
        """The backbone of any checkpoint with new `heads`: a checkpoint's own head, and a headkit
        save's heads, are left behind (training starts here, e.g. after continued pretraining).
        `processor`: the tokenizer, when the caller has it (default: the one saved with the backbone)."""
        backbone = load_backbone(model, trust_remote_code=trust_remote_code, dtype=dtype)
        return cls(backbone, head_configs(heads), weighting=weighting, processor=processor).eval()  # as transformers

    @classmethod
    def from_save(
        cls, directory: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None
    ) -> Any:
        """A full save written by `save` (backbone + heads)."""
        return cls.from_heads(directory, saved_backbone(directory, trust_remote_code, dtype))

    @classmethod
    def from_heads(cls, directory: str | os.PathLike, backbone: nn.Module, allow_other_weights: bool = False) -> Any:
        """The heads saved in `directory` on `backbone`, after checking they fit it: the same
        architecture, and the same weights as the backbone they were trained with
        (`allow_other_weights`: load them onto other weights anyway, with a warning)."""
        manifest = read_save(directory, backbone, allow_other_weights)
        model = cls(backbone, head_configs(manifest["heads"]), weighting=manifest.get("weighting", "static"))
        return restore(model, directory, manifest)

    def save_pretrained(self, directory: str | os.PathLike, processor: Any = None, card: dict | None = None) -> Path:
        """The full save `from_pretrained` reads back with its heads (`headkit.save`): backbone/ with
        the processor (by default the one the backbone was loaded with), the heads, a model card."""
        return save(self, directory, processor=processor if processor is not None else self._processor(), card=card)

    def push_to_hub(
        self,
        repo_id: str,
        processor: Any = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload headkit model",
        card: dict | None = None,
    ) -> str:
        """Save to a temporary folder and upload it as the hub repository `repo_id` (created if
        needed); `MultiHeadModel.from_pretrained(repo_id)` loads it back. Returns the commit URL."""
        card = {**(card or {}), "repo_id": repo_id}
        return push_folder(lambda d: self.save_pretrained(d, processor, card), repo_id, private, token, commit_message)
