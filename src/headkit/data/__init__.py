"""Inputs: where rows come from (readers, files, built-in corpora, images), TaskSpecs -> encoded
data (tasks), and padded batches (batching). Label parsing belongs to each head (heads/)."""
