"""A decoder LLM as a frozen backbone: SmolLM2-135M vs MiniLM, each with a classification head.

Same rows for both: the fixed, seeded 80/20 split of benchmarks/accuracy.py over Rotten Tomatoes
(fresh vs rotten, --limit rows), frozen backbones with the feature cache, a classification head
trained 30 epochs with no validation selection, max_length 64. SmolLM2 (the shipped GGUF,
dequantised to fp32 once, before the clock starts) has no pad token, so headkit pads with its eos
token; it is read with `last` pooling (the last real token, as decoder classifiers do) and with
`mean`. Reported: test accuracy and seconds (features + head training + test prediction).

    python benchmarks/decoder_backbone.py [--limit 3000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import platform

    import torch
    from accuracy import MAX_LENGTH, headkit_strategy, write_split

    from headkit.backbone import dequantised, resolve_model
    from headkit.data.tasks import TaskSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=3000)
    args = parser.parse_args()
    frozen = {"epochs": 30, "lr": 3e-3, "patience": 0, "val_fraction": 0.0}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        os.environ["HEADKIT_CACHE"] = str(out / "cache")  # every method computes its own features
        dequantised(resolve_model("smollm2"))  # a one-off conversion, not part of any method's time
        train_csv, test_csv = write_split("rotten_tomatoes", args.limit, out)
        for label, model, pooling in (
            ("MiniLM (22.7M), mean pooling", "minilm", "mean"),
            ("SmolLM2-135M, last token", "smollm2", "last"),
            ("SmolLM2-135M, mean pooling", "smollm2", "mean"),
        ):
            task = TaskSpec("y", str(train_csv), pooling=pooling)
            accuracy, seconds = headkit_strategy(
                "frozen",
                train_csv,
                test_csv,
                out / label.split()[0].lower() / pooling,
                model=model,
                tasks=[task],
                **frozen,
            )
            rows.append((label, accuracy, seconds))
    print(
        f"\nRotten Tomatoes, fixed 80/20 split of {args.limit} rows, frozen backbone + classification head, "
        f"max_length {MAX_LENGTH}; {platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"{'backbone':34}{'test accuracy':>15}{'seconds':>10}")
    for label, accuracy, seconds in rows:
        print(f"{label:34}{accuracy:15.4f}{seconds:10.1f}")


if __name__ == "__main__":
    main()
