"""Inputs: where rows come from (readers, files, built-in corpora, images), TaskSpecs -> encoded
data (tasks), and padded batches (batching). Label parsing belongs to each head (heads/)."""

# Padded tokens per inference forward pass (examples x the longest one's length; batching.py's
# `token_batches`): long texts get small batches and short ones big ones, so the work and memory
# of a pass stay about even. Here, in a module that imports nothing, so that the CLI's flags and
# `model.predict`'s signature can name it without loading torch. 8192 = 64 texts of 128 tokens;
# benchmarks/token_batches.py measured it against fixed counts.
MAX_TOKENS = 8192
