"""Per-token features stored in bfloat16 vs fp32: does a token head trained on them notice?

The feature cache keeps per-token hidden states (token-classification, span, LM heads) on disk
in bfloat16: half the bytes of fp32, fp32's range, 8 significant bits. Here a token-classification
head on frozen MiniLM is trained on the shipped tweet NER data (80/20 split, fixed seed) from a
cache stored in each type, with the same seeds, epochs and batches, and scored with seqeval on
the held-out 20%, where the backbone runs live in fp32 (so a head trained on rounded features is
applied to exact ones, as in use). The spread over seeds is the noise the difference is read
against. Also printed: the time of the backbone pass that fills each cache, and its file size.

    python benchmarks/token_feature_store.py [--epochs 5] [--seeds 0 1] [--out runs/token_feature_store]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(store: str, seed: int, args: argparse.Namespace, train_file: Path, test_file: Path) -> dict:
    """Train on a cache stored as `store`, then score on the held-out file with the live backbone."""
    import torch
    from class_weights import train_and_score  # the same head, split and scoring as that benchmark

    from headkit.training import features

    features.TOKEN_DTYPE = {"bfloat16": torch.bfloat16, "float32": torch.float32}[store]
    out = Path(args.out) / f"{store}-seed{seed}"
    result, evaluation, _, seconds = train_and_score(
        out, train_file, test_file, strategy="frozen", epochs=args.epochs, lr=args.lr, seed=seed
    )
    fill = result.metrics["seconds"] - sum(e["train_seconds"] for e in result.metrics["epochs"])
    return {"f1": evaluation.scores["ner"]["f1"], "seconds": seconds, "fill": fill}


def main() -> None:
    from class_weights import write_split  # the same 80/20 split of tweet NER

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3, help="the head's learning rate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/token_feature_store")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    train_file, test_file = write_split(Path(args.out))
    os.environ["HEADKIT_CACHE"] = tempfile.mkdtemp(prefix="headkit-bench-")  # each store filled once, here
    stores = ("float32", "bfloat16")
    results = {store: [run(store, seed, args, train_file, test_file) for seed in args.seeds] for store in stores}
    print(f"\ntweet NER, frozen MiniLM + token-classification head, {args.epochs} epochs, seeds {args.seeds}")
    print(f"{'store':10}{'held-out F1 per seed':>28}{'mean':>8}{'fill s':>8}")
    for store, runs in results.items():
        f1s = [r["f1"] for r in runs]
        print(f"{store:10}{' '.join(f'{f:.4f}' for f in f1s):>28}{statistics.mean(f1s):8.4f}{runs[0]['fill']:8.1f}")
    files = (Path(os.environ["HEADKIT_CACHE"]) / "features").glob("*.safetensors")
    print("cache files, MB:", sorted(round(p.stat().st_size / 2**20, 1) for p in files))


if __name__ == "__main__":
    main()
