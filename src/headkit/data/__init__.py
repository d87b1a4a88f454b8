"""Inputs: where rows come from (readers, files, built-in corpora, images), TaskSpecs -> encoded
data (tasks), and padded batches (batching). Label parsing belongs to each head (heads/)."""

# Padded tokens per inference forward pass (examples x the longest one's length; batching.py's
# `token_batches`): long texts get small batches and short ones big ones, so the work and memory
# of a pass stay about even. Here, in a module that imports nothing, so that the CLI's flags and
# `model.predict`'s signature can name it without loading torch. 4096 = 8 texts of 512 tokens, 32
# of 128, 64 (the count cap) of up to 64: on a 2-core CPU 2048 to 4096 predicted fastest, 8192
# 10-20% slower on 512-token texts and fixed batches of 64 slower still (benchmarks/token_batches.py).
MAX_TOKENS = 4096
