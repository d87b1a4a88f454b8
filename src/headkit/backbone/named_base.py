"""The base model a LoRA save names instead of copying it (ship/save.py writes the name): which
model that is (`named_base`: heads.json's "base", or peft's adapter_config.json), the name
`load_backbone` reads it by (`base_name`), and the check that the model loaded by that name is
the one the adapter was trained on (`check_base`). backbone/load.py's `saved_base` loads it with
these, so that loading a save's backbone/ needs nothing from ship/.
"""

from __future__ import annotations

import json
from pathlib import Path

from headkit._typing import Backbone
from headkit.backbone.fingerprint import differing_weights, fingerprint
from headkit.backbone.resolve import resolve_model
from headkit.errors import FingerprintMismatchError
from headkit.hub import is_hub_id
from headkit.save_layout import ADAPTER_DIR, read_manifest


def named_base(directory: Path) -> dict | None:
    """The base model a full save names (heads.json's "base", else peft's adapter_config.json);
    None when it names none."""
    return read_manifest(directory)["backbone"].get("base") or adapter_base(directory)


def base_name(base: dict) -> str:
    """The name `load_backbone` reads a saved base reference by: a hub id with its revision."""
    name, revision = base["name_or_path"], base.get("revision")
    return f"{name}@{revision}" if revision and is_hub_id(name) and "@" not in name else name


def adapter_base(directory: Path) -> dict | None:
    """The base model peft's adapter_config.json names (a save whose heads.json was rewritten
    by save_heads has only this one); no weights digest to check it against."""
    path = directory / ADAPTER_DIR / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return {"name_or_path": name, "revision": config.get("revision")} if name else None


def check_base(base: dict, backbone: Backbone, directory: Path) -> None:
    """Refuse a base model other than the one the adapter was trained on (another fine-tune, a
    newer revision, a folder overwritten since): the adapter would apply to other weights and the
    heads predict garbage without a word."""
    current = fingerprint(backbone)
    recorded = base.get("weights_sample_sha256")
    if recorded is None or recorded == current["weights_sample_sha256"]:
        return
    names = differing_weights(base, current)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    saved = base["name_or_path"] + (f" at revision {base['revision']}" if base.get("revision") else "")
    hint = ""
    if base.get("dtype") != current["dtype"] and "float16" in {base.get("dtype"), current["dtype"]}:
        was = base.get("dtype")
        hint = f"; the base was {was} when saved and is {current['dtype']} now: load it in {was}"
    raise FingerprintMismatchError(
        f"{directory} is a LoRA adapter trained on {saved} ({base.get('model_type')}), but the model loaded from "
        f"{base_name(base)} now ({current['model_type']}, from {resolve_model(base_name(base)).path}) has other "
        f"weights: {len(names)} of {len(current['weights_samples'])} tensors differ ({shown}){hint}. Put the base "
        "model it was trained on back at that name, or train the adapter again on this one"
    )
