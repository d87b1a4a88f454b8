"""Few-shot training (strategy `fewshot`): the SetFit recipe, extended beyond classification.

SetFit (Tunstall et al. 2022) trains well from 8 examples per class in two steps, and so does this:

1. **Contrastive phase.** Pairs are drawn from the labelled examples, and the backbone learns to
   make the cosine similarity of two embeddings equal the similarity of their labels (mean squared
   error, SetFit's CosineSimilarityLoss). Two recipes:

   * **all-pairs** (default): each step embeds a batch of examples once and trains on every pair
     among them, the target each head type's `fewshot_similarity` of the two labels; only the
     top two thirds of the layers tune, so the backward pass stops short of the bottom third
     (which still runs in train mode, its dropout live, as partial:K's frozen layers do). A
     SetFit step spends 32 text passes on 16 pairs; a step here spends 16 on 120. The recipe
     (steps of 32 examples, the top two thirds tuned) was chosen on a development split
     (benchmarks/fewshot_dev.py) and compared with SetFit on the test rows
     (benchmarks/fewshot_defaults.py); more labels get more steps (fewshot_auto_steps).
   * **setfit**: SetFit's own sampling, every layer tuned. Per iteration, each example is the
     anchor of two pairs (token tags use these pairs in both recipes):

   ================  =======================================  ================================
   head type         pair partners                            target similarity
   ================  =======================================  ================================
   classification    one of the same class, one of another    1 / 0
   multilabel        two at random                            Jaccard overlap of the label sets
   regression        two at random                            1 - |y_i - y_j| / range of y
   token tags        *tokens* (a word's first sub-word): one  1 / 0
                     of the same tag, one of another; anchor
                     tags drawn uniformly, so rare entity
                     tags get as many pairs as ``O``
   ================  =======================================  ================================

   SetFit itself covers only the first row; the others apply the same idea (make embedding
   geometry mirror label geometry) to what those heads read: the pooled vector, or the token's.
   A head's label codec draws its pairs (`codec.fewshot_pairs`) and says how alike two labels are
   (`codec.fewshot_similarity`), and the head type's `fewshot` part solves it (heads/fewshot.py);
   this module runs the two phases.
2. **Head phase.** The backbone is frozen, its features are computed once, and every head is
   solved to convergence by scikit-learn, as SetFit does: logistic regression with SetFit's C=1
   (classification, token tags, one per label for multilabel) or ridge regression with its
   strength chosen by leave-one-out. The heads read L2-normalised vectors (`normalize: true` in
   their config, set before they are built by `fewshot_heads`, as SetFit's sentence-transformers
   body ends in a Normalize module): the cosine loss trained directions, not lengths. The solved
   weights go into the head's own linear layer, so the saved model predicts, exports to ONNX and
   serves like any other. (Exporting it as a plain transformers *ForSequenceClassification is
   refused: those classes cannot normalise.)

There is no epoch loop and no validation-based selection: with 8 examples per class there is
nothing to select on. A validation split, if asked for, is only scored. The contrastive phase
is short; a run killed during it starts that phase again on --resume, and one killed after it
reuses the saved backbone (`contrastive.safetensors`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from headkit._fs import atomic_write_bytes
from headkit.data.batching import EncodedData, collate, model_inputs
from headkit.errors import CheckpointError, HeadConfigError
from headkit.heads import IGNORE_INDEX, REGISTRY, HeadConfig, Pair, head_class
from headkit.heads.fewshot import block_pairs
from headkit.model import MultiHeadModel
from headkit.training.features import FeatureCache, compute_features, features_needed
from headkit.training.strategies import adamw, freeze_bottom, layer_stack, set_backbone_trainable
from headkit.training.strategy_defaults import fewshot_auto_steps

logger = logging.getLogger(__name__)

CONTRASTIVE_FILE = "contrastive.safetensors"
TOKEN_PAIR_BATCH = 16  # all-pairs recipe: token-tag pairs (which pair tokens, not examples) go 16 to a step


# ----------------------------------------------------------------------------- pairs


def check_fewshot_heads(head_types: dict[str, str]) -> None:
    supported = [t for t in REGISTRY if head_class(t).fewshot is not None]
    unsupported = {n: t for n, t in head_types.items() if head_class(t).fewshot is None}
    if unsupported:
        raise HeadConfigError(
            f"strategy fewshot trains {supported} heads; {unsupported} cannot: use frozen, lora or full"
        )


def fewshot_heads(configs: dict[str, HeadConfig]) -> dict[str, HeadConfig]:
    """The run's head configs as few-shot training builds them (new objects): heads that read
    unit vectors, which is what the contrastive pairs train."""
    check_fewshot_heads({name: c.type for name, c in configs.items()})
    # check_fewshot_heads refused the head types without a few-shot part
    return {name: head_class(c.type).fewshot.configure(c) for name, c in configs.items()}  # type: ignore[union-attr]


def make_pairs(data: EncodedData, head_types: dict[str, str], iterations: int, seed: int) -> list[Pair]:
    """Every head's contrastive pairs (2 per labelled example per iteration), in a seeded random order.

    Each generator emits an anchor's two pairs side by side, and the shuffle moves whole anchors,
    not single pairs: both pairs of an anchor land in one batch, so a batch of 16 pairs embeds at
    most 24 distinct texts instead of 32 (the same pairs as a pair-level shuffle, in other batches).
    """
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    for name, head_type in head_types.items():
        y = data.labels.get(name)
        if y is None:
            continue
        pairs += head_class(head_type).codec.fewshot_pairs(name, y, iterations, rng)
    anchors = [pairs[k : k + 2] for k in range(0, len(pairs), 2)]
    return [pair for k in rng.permutation(len(anchors)) for pair in anchors[k]]


def all_pair_steps(
    data: EncodedData, head_types: dict[str, str], steps: int, batch_size: int, iterations: int, seed: int
) -> list[list[Pair]]:
    """The all-pairs recipe's steps: each embeds `batch_size` examples (epochs of a seeded shuffle)
    and trains on every pair among them — batch(batch-1)/2 pairs for batch texts, where a SetFit
    step of 16 pairs embeds 32. Heads whose pairs are tokens, not examples, add steps of their
    own `fewshot_pairs` (`iterations`), shuffled in among the others.
    """
    rng = np.random.default_rng(seed)
    n, size = len(data), min(batch_size, len(data))
    order = (
        np.concatenate([rng.permutation(n) for _ in range(-(-steps * size // n))])
        if steps and n
        else np.empty(0, np.int64)
    )
    blocks = [order[k * size : (k + 1) * size] for k in range(steps)]
    batches: list[list[Pair]] = [[] for _ in blocks]
    token_pairs: list[Pair] = []
    for name, head_type in head_types.items():
        y = data.labels.get(name)
        if y is None:
            continue
        kind = head_class(head_type)
        if kind.per_token:
            token_pairs += kind.codec.fewshot_pairs(name, y, iterations, rng)
            continue
        kind.codec.fewshot_pairs(name, y, 0, rng)  # no pairs, only the head's checks of its labels (2 per class, ...)
        for batch, pairs in zip(
            batches, block_pairs(name, np.asarray(y), blocks, kind.codec.fewshot_similarity), strict=True
        ):
            batch += pairs
    batches += [token_pairs[k : k + TOKEN_PAIR_BATCH] for k in range(0, len(token_pairs), TOKEN_PAIR_BATCH)]
    return [batches[k] for k in rng.permutation(len(batches)) if batches[k]]


def tuned_from(backbone: torch.nn.Module, tuned_layers: int | None) -> int:
    """The first layer the pairs tune: the top `tuned_layers` of the stack, by default the top two
    thirds (the bottom third, rounded, stays frozen: 2 of MiniLM's 6 layers, 4 of BERT-base's 12).
    Chosen on a development split (benchmarks/fewshot_dev.py): the top half scored 1.5-1.8 points
    lower on Rotten Tomatoes at 8 and 64 per class there (on the test rows: within noise). A
    backbone without a recognisable layer stack tunes everything by default."""
    try:
        _, layers = layer_stack(backbone)
    except HeadConfigError:
        if tuned_layers is None:
            return 0
        raise
    return round(len(layers) / 3) if tuned_layers is None else max(0, len(layers) - tuned_layers)


# ----------------------------------------------------------------------------- contrastive phase


def _pair_similarities(
    model: MultiHeadModel, data: EncodedData, pairs: list[Pair], pad_id: int
) -> tuple[torch.Tensor, list[str]]:
    """Cosine similarity of every pair, from one backbone pass over the distinct examples in them."""
    ids = sorted({p.left for p in pairs} | {p.right for p in pairs})
    row = {i: r for r, i in enumerate(ids)}
    inputs = model_inputs(collate([data[i] for i in ids], pad_id, {}, {}), model.device)
    heads = sorted({p.head for p in pairs})
    features = model.forward_features(inputs, heads)

    def embed(head: str, i: int, pos: int) -> torch.Tensor:
        layer, _ = model.reads(head)
        if pos >= 0:
            return features.at(layer)[row[i], pos]
        return model.adapter.pooled(features, model.heads[head].config.pooling, layer)[row[i]]

    left = torch.stack([embed(p.head, p.left, p.left_pos) for p in pairs])
    right = torch.stack([embed(p.head, p.right, p.right_pos) for p in pairs])
    return F.cosine_similarity(left.float(), right.float(), dim=-1), [p.head for p in pairs]


def _sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every gradient across processes in one all-reduce (a process without pairs adds zeros)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g)
        offset += g.numel()


def contrastive_tune(
    model: MultiHeadModel,
    data: EncodedData,
    batches: list[list[Pair]],
    pad_id: int,
    lr: float,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    tuned_from: int = 0,
) -> list[dict[str, Any]]:
    """One optimizer step per batch of pairs: AdamW on the backbone from layer `tuned_from` up,
    MSE between cosine similarity and target.

    `shard` = (index, count) under several processes: each process takes its share of a step's
    pairs and embeds them, and the gradients are summed across processes (each loss is scaled by
    the step's whole size), so the step equals one process's step over all of them. The frozen
    layers below `tuned_from` run in train mode with the rest (dropout live, as under partial:K;
    replaying them once per example saved 4-10% of this phase's CPU time, see git history).
    Returns the per-step loss of each head (for the loss-curve plot and metrics.json); the tuned
    parameters are left trainable, which tells save_contrastive what to write.
    """
    set_backbone_trainable(model.backbone, True)
    if tuned_from:
        freeze_bottom(model.backbone, tuned_from)
    model.backbone.train()
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=lr, weight_decay=weight_decay)
    index, count = shard
    scheduler = get_linear_schedule_with_warmup(optimizer, round(warmup_ratio * len(batches)), len(batches))
    use_bf16 = model.device.type == "cuda" and torch.cuda.is_bf16_supported()
    steps = []
    bar = tqdm(batches, desc="contrastive pairs", unit="batch", disable=not progress, leave=False)
    try:
        for step, whole in enumerate(bar, start=1):
            share = -(-len(whole) // count)
            chunk = whole[index * share : (index + 1) * share]
            if chunk:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    similarity, heads = _pair_similarities(model, data, chunk, pad_id)
                target = torch.tensor([p.target for p in chunk], device=similarity.device)
                # this slice's part of the step's mean (one process: the mean itself, times exactly 1)
                loss = F.mse_loss(similarity, target) * (len(chunk) / len(whole))
                loss.backward()
            if count > 1:
                _sum_gradients(params)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if chunk:  # a last, short step can leave a process nothing to embed
                errors = (similarity.detach() - target) ** 2
                per_head = {
                    h: round(float(errors[[k for k, x in enumerate(heads) if x == h]].mean()), 5) for h in set(heads)
                }
                steps.append({"step": step, "losses": per_head})  # this process's pairs
                bar.set_postfix(loss=f"{float(errors.mean()):.4f}")
    finally:  # back to inference mode, whatever happened
        model.backbone.eval()
    return steps


def save_contrastive(run: Path, model: MultiHeadModel, steps: list[dict[str, Any]]) -> None:
    """The tuned parameters (those still trainable after contrastive_tune), so a resumed run skips
    the contrastive phase; the frozen rest is the pretrained checkpoint's, loaded anyway."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.backbone.named_parameters() if p.requires_grad}
    metadata = {"steps": str(len(steps))}
    atomic_write_bytes(run / CONTRASTIVE_FILE, safetensors.torch.save(tensors, metadata=metadata))


def load_contrastive(run: Path, model: MultiHeadModel) -> bool:
    path = run / CONTRASTIVE_FILE
    if not path.is_file():
        return False
    tensors = safetensors.torch.load_file(path, device=str(model.device))
    unexpected = model.backbone.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise CheckpointError(f"{path} holds tensors this backbone lacks ({unexpected[:3]}): not this run's backbone")
    return True


# ----------------------------------------------------------------------------- head phase


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: heads are solved on directions, which is what the pairs trained."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _token_rows(cache: FeatureCache, layer: int, tags: list[list[int] | None]) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for i, row in enumerate(tags):
        for pos, tag in enumerate(row or []):
            if tag != IGNORE_INDEX:
                rows.append(int(cache.offsets[i]) + pos)
                labels.append(tag)
    return cache.tokens[layer][rows].float().numpy(), np.asarray(labels)


@torch.no_grad()
def solve_heads(model: MultiHeadModel, data: EncodedData, pad_id: int, progress: bool = True) -> None:
    """Fit every head in closed form on the frozen backbone's features (one backbone pass). The
    heads read unit vectors, so they are built from `fewshot_heads` configs."""
    built = [n for n, h in model.heads.items() if n in data.labels and not getattr(h.config, "normalize", False)]
    if built:
        raise HeadConfigError(
            f"heads {built} do not read unit vectors, which few-shot solutions are fitted on: "
            "build them from fewshot_heads(configs)"
        )
    poolings, token_layers = features_needed(model)
    cache = compute_features(model, data, poolings, token_layers, pad_id=pad_id, progress=progress)
    for name, head in model.heads.items():
        y = data.labels.get(name)
        if y is None:
            continue
        layer, key = model.reads(name)
        assert head.fewshot is not None  # check_fewshot_heads refused the head types without one
        if key is None:
            x, tags = _token_rows(cache, layer, y)
            head.fewshot.fit(_unit(x), tags)
        else:
            head.fewshot.fit(_unit(cache.pooled[key].numpy()), y)


# ----------------------------------------------------------------------------- the recipe


def run_fewshot(
    model: MultiHeadModel,
    data: EncodedData,
    head_types: dict[str, str],
    run: Path,
    *,
    recipe: str,
    steps: int | str,
    iterations: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    pad_id: int,
    resume: bool,
    tuned_layers: int | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Contrastive phase (or its saved result), then the heads. Returns steps and timings.

    recipe "all-pairs": `steps` steps ("auto": fewshot_auto_steps) of `batch_size` examples and
    every pair among them, the top `tuned_layers` tuned; "setfit": SetFit's pairs (2 x `iterations` per example),
    `batch_size` pairs a step, every layer tuned. Under several processes (`shard`) the
    contrastive phase runs data-parallel; every process then solves the heads on the same
    features, and the first one writes."""
    check_fewshot_heads(head_types)
    started = time.perf_counter()
    losses: list[dict[str, Any]] = []
    first_tuned = 0
    if recipe == "setfit":
        pairs = make_pairs(data, head_types, iterations, seed) if iterations else []
        size = batch_size * shard[1]
        batches = [pairs[k : k + size] for k in range(0, len(pairs), size)]
    else:
        steps = fewshot_auto_steps(len(data)) if steps == "auto" else int(steps)
        batches = all_pair_steps(data, head_types, steps, batch_size, iterations, seed) if steps else []
        first_tuned = tuned_from(model.backbone, tuned_layers)
    n_pairs = sum(len(b) for b in batches)
    if resume and load_contrastive(run, model):
        logger.info(f"resumed from {run / CONTRASTIVE_FILE}: contrastive phase already done")
    elif batches:
        logger.info(f"contrastive phase ({recipe}): {n_pairs} pairs from {len(data)} examples in {len(batches)} steps")
        torch.manual_seed(seed)
        losses = contrastive_tune(
            model, data, batches, pad_id, lr, weight_decay, progress=progress, shard=shard, tuned_from=first_tuned
        )
        if shard[0] == 0:
            save_contrastive(run, model, losses)
    contrastive_seconds = time.perf_counter() - started
    set_backbone_trainable(model.backbone, False)
    solve_heads(model, data, pad_id, progress=progress)
    return {
        "steps": losses,
        "recipe": recipe,
        "pairs": n_pairs,
        "contrastive_steps": len(batches),
        "contrastive_seconds": round(contrastive_seconds, 2),
        "head_seconds": round(time.perf_counter() - started - contrastive_seconds, 2),
        "backbone_modified": bool(batches),
    }
