"""How long a question-answering head takes to find a window's candidate spans, against the per-pair
tensor indexing it used before (the baseline, kept below), on the same logits in the same run.

Synthetic logits: "peaked" ones put 20 starts and the 20 ends a few tokens after them on top, as a
model's do once its top starts and ends lie close together, so most of the n-best x n-best pairs are
valid spans and each was one tensor add and read; random logits make few pairs valid and hide
the cost. Both searches must return the same spans (the same float32 sums).

    python benchmarks/qa_answers.py [--windows 1000] [--tokens 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from headkit.heads.qa import N_BEST, _window_spans


def per_pair(start_logits, end_logits, offsets, n_best: int, max_tokens: int) -> list[tuple[float, int, int]]:
    """The search before: every (start, end) pair's score read from the tensors one at a time."""
    k = min(n_best, len(offsets))
    starts, ends = start_logits.topk(k).indices.tolist(), end_logits.topk(k).indices.tolist()
    spans = []
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_tokens:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), offsets[s][0], offsets[e][1]))
    return spans


def windows(n: int, tokens: int, peaked: bool) -> list[tuple[torch.Tensor, torch.Tensor, list]]:
    """`n` windows of logits: a question's 20 tokens and the last one have no offsets; `peaked`
    raises 20 starts and the 20 ends a few tokens after them."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        logits = torch.randn(tokens, 2, generator=generator)
        if peaked:
            logits[100:120, 0] += 10
            logits[105:125, 1] += 10
        offsets = [None] * 20 + [(5 * i, 5 * i + 4) for i in range(tokens - 21)] + [None]
        out.append((logits[:, 0], logits[:, 1], offsets))
    return out


def timed(search, batch) -> tuple[float, list]:
    started = time.perf_counter()
    spans = [search(s, e, o, N_BEST, 30) for s, e, o in batch]
    return time.perf_counter() - started, spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    from machine import machine_line

    print(machine_line())
    print("\n| logits | per-pair s | one op s | speed-up | same spans |\n|---|---|---|---|---|")
    for peaked in (True, False):
        batch = windows(args.windows, args.tokens, peaked)
        timed(per_pair, batch[:50]), timed(_window_spans, batch[:50])  # warm-up
        before, old = min((timed(per_pair, batch) for _ in range(3)), key=lambda r: r[0])
        after, new = min((timed(_window_spans, batch) for _ in range(3)), key=lambda r: r[0])
        name = "peaked" if peaked else "random"
        print(f"| {name} | {before:.3f} | {after:.3f} | {before / after:.1f}x | {old == new} |")
    print(f"\n{args.windows} windows of {args.tokens} tokens, n-best {N_BEST}, at most 30 answer tokens; best of 3")


if __name__ == "__main__":
    main()
