"""`from_pretrained` / `save_pretrained` / `push_to_hub` for MultiHeadModel, as transformers names them.

huggingface_hub's `ModelHubMixin` is the conventional base for a model that is not a transformers
`PreTrainedModel` (timm, sentence-transformers' relatives, many research libraries use it): it
gives `save_pretrained(dir, push_to_hub=..., repo_id=...)` and `push_to_hub(repo_id, branch=,
create_pr=, private=, token=, ...)` their hub signatures and behaviour, and the `headkit` library tag.
Saving itself is headkit's (`_save_pretrained`: ship/save.py's atomic full save plus config.json);
`from_pretrained` is headkit's own, because it also takes any transformers checkpoint as a backbone
for new heads (`heads=`), with transformers' loading options (`revision`, `token`, `dtype`,
`device_map`, `trust_remote_code`, ...).

A mixin, so that model.py keeps to the model (adapter, heads, forward) while saving and loading
stay where the save format lives: a headkit save is read back through ship/load.py (which builds
nothing itself). Nothing here imports headkit.model: the class that inherits these methods is the
one they build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelHubMixin

from headkit._typing import Backbone
from headkit.backbone import load_backbone
from headkit.config import MultiHeadConfig
from headkit.errors import HeadkitError
from headkit.heads import HeadConfig, config_from_dict
from headkit.hub import hub_options, local_path
from headkit.ship.load import read_save, restore, saved_backbone
from headkit.ship.save import find_save, read_training, save

if TYPE_CHECKING:
    from headkit.adapter import BackboneAdapter
    from headkit.weighting import LossWeighting

HeadConfigs = Mapping[str, HeadConfig | dict[str, Any]]


def head_configs(heads: HeadConfigs | None) -> dict[str, HeadConfig]:
    """Head configs given as dataclasses or as their heads.json dicts."""
    return {h: c if isinstance(c, HeadConfig) else config_from_dict(c) for h, c in (heads or {}).items()}


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """transformers' spellings of a dtype: a torch.dtype, "bfloat16"-style names, or None / "auto"
    (the checkpoint's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    from headkit.devices import DTYPES

    if dtype not in DTYPES:
        raise HeadkitError(f"dtype {dtype!r}: use a torch.dtype, 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


class PretrainedMixin(
    ModelHubMixin,
    library_name="headkit",
    tags=["headkit"],
    repo_url="https://pypi.org/project/headkit/",
):
    """Loading and saving for a model built as `cls(backbone, heads, weighting=...)`."""

    if TYPE_CHECKING:  # what the model class (MultiHeadModel) provides
        adapter: BackboneAdapter
        weighting: LossWeighting
        max_length: int | None
        training_facts: dict[str, Any] | None

        @property
        def backbone(self) -> Backbone: ...
        @property
        def head_configs(self) -> dict[str, HeadConfig]: ...
        def _processor(self) -> Any: ...
        def eval(self) -> Any: ...  # nn.Module's (returns the model)

    @classmethod
    def from_pretrained(  # type: ignore[override]  # headkit's own loader, with ModelHubMixin's hub options
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        heads: HeadConfigs | None = None,
        *,
        weighting: str = "static",
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        dtype: torch.dtype | str | None = None,
        device_map: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ) -> Any:
        """A model from a local directory or a Hugging Face hub id (`revision`: a branch, tag or commit).

        A headkit save or run (local or on the hub) loads with its heads (and `heads`, if given, are
        added to them); any other checkpoint gives its backbone (its own head is dropped) with `heads`.
        `dtype`: a torch.dtype or its name ("bfloat16"; "auto" or None: as saved). `device_map`: the one
        device the whole model goes to ("auto": a GPU if there is one; "cpu", "cuda", "cuda:1", "mps"):
        a multi-head model is not split across devices. `token`, `cache_dir`, `force_download`,
        `local_files_only`: as in transformers, for every file this load fetches from the hub.
        """
        name = str(pretrained_model_name_or_path)
        if revision and not Path(name).expanduser().exists():  # a local folder has no revisions
            name = f"{name}@{revision}"
        with hub_options(token, cache_dir, local_files_only, force_download):
            saved = find_save(local_path(name))
            if saved is None:
                model = cls.on_backbone(name, heads, weighting, trust_remote_code, as_dtype(dtype))
            else:
                model = cls.from_save(saved, trust_remote_code=trust_remote_code, dtype=as_dtype(dtype))
                for head, config in head_configs(heads).items():
                    model.add_head(head, config)
        if device_map is not None:
            model.to(one_device(device_map))
        return model.eval()

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
        model = cls.from_heads(directory, saved_backbone(directory, trust_remote_code, dtype))
        model.columns = _saved_columns(directory)
        model.training_facts = read_training(directory)  # for the card when it is saved again or pushed
        return model

    @classmethod
    def from_heads(cls, directory: str | os.PathLike, backbone: Backbone, allow_other_weights: bool = False) -> Any:
        """The heads saved in `directory` on `backbone`, after checking they fit it: the same
        architecture, and the same weights as the backbone they were trained with
        (`allow_other_weights`: load them onto other weights anyway, with a warning)."""
        manifest = read_save(directory, backbone, allow_other_weights)
        model = cls(backbone, head_configs(manifest["heads"]), weighting=manifest.get("weighting", "static"))
        return restore(model, directory, manifest)

    def save_pretrained(  # ModelHubMixin's, plus the processor and card a save holds
        self,
        save_directory: str | os.PathLike,
        *,
        processor: Any = None,
        card: dict | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **hub_kwargs: Any,
    ) -> Any:
        """The full save `from_pretrained` reads back with its heads: backbone/ with the tokenizer or
        image processor (by default the one the model reads with), the heads, config.json
        (`model.config`) and a model card. `push_to_hub=True` then uploads it as `repo_id` (default:
        the folder's name), with `push_to_hub`'s options. Returns the folder (the commit URL when pushed)."""
        # the push saves again, into a temporary folder: that inner save keeps the outer one's processor and card
        outer = self.__dict__.get("_save_options") or {}
        processor = processor if processor is not None else outer.get("processor")
        self._save_options = {"processor": processor, "card": {**outer.get("card", {}), **(card or {}),
                                                               **_card_repo(hub_kwargs)}}  # fmt: skip
        try:
            folder = Path(save_directory)
            pushed = super().save_pretrained(folder, push_to_hub=push_to_hub, repo_id=repo_id, **hub_kwargs)
        finally:
            self._save_options = outer
        return pushed if push_to_hub else Path(save_directory)

    def _save_pretrained(self, save_directory: Path) -> None:
        options = getattr(self, "_save_options", {})
        processor = options.get("processor")
        save(self, save_directory, processor=processor if processor is not None else self._processor(),
             card=options.get("card"))  # fmt: skip  # config.json among its files

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Save to a temporary folder and upload it as the hub repository `repo_id` (created if
        needed; huggingface_hub's options: `private`, `token`, `branch`, `create_pr`,
        `commit_message`, ...); `MultiHeadModel.from_pretrained(repo_id)` loads it back. The model
        card names the repository. Returns the commit URL."""
        kwargs.setdefault("commit_message", "Upload headkit model")
        kwargs["model_card_kwargs"] = {"repo_id": repo_id, **(kwargs.get("model_card_kwargs") or {})}
        return super().push_to_hub(repo_id, **kwargs)

    @property
    def config(self) -> MultiHeadConfig:
        """What this model is (backbone, heads, weighting, columns), read off it now: see headkit/config.py."""
        from headkit import __version__

        backbone = self.backbone.config
        return MultiHeadConfig(
            backbone=str(getattr(backbone, "name_or_path", "") or ""),
            revision=getattr(backbone, "_commit_hash", None),
            model_type=getattr(backbone, "model_type", None),
            hidden_size=self.adapter.width,
            heads={name: config.to_dict() for name, config in self.head_configs.items()},
            weighting=self.weighting.method,
            max_length=self.max_length,
            columns=dict(getattr(self, "columns", {}) or {}),
            headkit_version=__version__,
        )


def one_device(device_map: Any) -> torch.device:
    """transformers' `device_map` spellings that name one device: "auto", "cpu", "cuda", "cuda:1",
    "mps", a GPU index, a torch.device, or {"": any of those}. A map that splits the model across
    devices is refused: the heads read the backbone's last layers, so the model stays whole."""
    from headkit.devices import pick_device

    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise HeadkitError(
                f"device_map {device_map!r} splits the model; a MultiHeadModel goes to one device: "
                'device_map="cuda", 0, or {"": 0}'
            )
        device_map = device_map[""]
    if isinstance(device_map, int):
        device_map = f"cuda:{device_map}"
    if isinstance(device_map, torch.device):
        device_map = str(device_map)
    try:
        return pick_device(str(device_map))
    except HeadkitError as e:
        raise HeadkitError(f"device_map {device_map!r}: {e}".replace("--device ", "")) from e


def _card_repo(hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The repository a push names, for the model card's loading snippet."""
    repo = (hub_kwargs.get("model_card_kwargs") or {}).get("repo_id")
    return {"repo_id": repo} if repo else {}


def _saved_columns(directory: str | os.PathLike) -> dict[str, dict[str, str | None]]:
    """The training columns recorded in a save's config.json ({} for saves without one)."""
    from headkit.errors import CheckpointError

    try:
        return dict(MultiHeadConfig.from_pretrained(directory).columns)
    except CheckpointError:
        return {}
