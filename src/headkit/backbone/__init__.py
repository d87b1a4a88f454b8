"""Find, inspect, load and fingerprint backbones, one job per module:

- `resolve`: an alias, `timm:` name, hub id, local folder or GGUF file -> a `ModelSource` and its
  config, refusing checkpoint code unless trusted;
- `inspect`: where a checkpoint's backbone ends and its head starts, on the meta device, and the
  pooling it declares;
- `load`: the backbone (`AutoModel`), its processor (with a pad token) and its input limit;
- `fingerprint`: which backbone a set of heads was trained on.

The names callers use are re-exported here. The `fingerprint` function is not: it would hide the
`fingerprint` submodule, so it is imported from `headkit.backbone.fingerprint` (or `headkit`).
"""

from headkit.backbone.inspect import (
    SENTENCE_TRANSFORMERS_POOLING,
    ModelReport,
    declared_pooling,
    inspect_model,
    model_class,
    split_backbone,
)
from headkit.backbone.load import (
    dequantised,
    input_limit,
    load_backbone,
    load_processor,
    max_input_tokens,
    quietly_from_pretrained,
    with_pad_token,
)
from headkit.backbone.resolve import (
    ALIASES,
    SMOLLM2_GGUF,
    ModelSource,
    check_remote_code,
    gguf_cache_key,
    load_config,
    resolve_model,
)

__all__ = [
    "ALIASES",
    "SENTENCE_TRANSFORMERS_POOLING",
    "SMOLLM2_GGUF",
    "ModelReport",
    "ModelSource",
    "check_remote_code",
    "declared_pooling",
    "dequantised",
    "gguf_cache_key",
    "input_limit",
    "inspect_model",
    "load_backbone",
    "load_config",
    "load_processor",
    "max_input_tokens",
    "model_class",
    "quietly_from_pretrained",
    "resolve_model",
    "split_backbone",
    "with_pad_token",
]
