"""Type aliases shared across the package (no runtime behaviour)."""

from typing import Any, TypeAlias

# A backbone: a transformers PreTrainedModel, a PEFT wrapper around one, or transformers' timm wrapper.
# headkit reads what each kind has by duck typing (config, get_base_model, get_encoder,
# get_input_embeddings, merge_and_unload ...), and nn.Module's __getattr__ types every attribute it
# does not declare as `Tensor | Module`, which none of those reads is; so to the type checker a
# backbone is Any.
Backbone: TypeAlias = Any
