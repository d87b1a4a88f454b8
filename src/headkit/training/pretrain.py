"""Continued pretraining (domain adaptation): the pretraining objective on a user's own text.

    corpus files -> documents -> MLM: chunks of max_length tokens, masked on the fly
                                 CLM: documents packed end to end into fixed-length blocks
    backbone + LM head (the checkpoint's own pretraining head when it has one, else a new head
    tied to the input embeddings) -> the same training loop as `headkit train` (`fit`)
    -> RUN/model: backbone + LM head; `headkit train --model RUN` then uses the adapted backbone

Masking is dynamic (15% of tokens, of which 80% [MASK], 10% random, 10% unchanged: BERT's
recipe, via transformers' own collator; at least one token per sequence); held-out text is
masked with a fixed seed so the perplexity before and after training is measured on the same masks.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headkit.backbone import dequantised, input_limit, inspect_model, load_config, resolve_model
from headkit.data.batching import EncodedData, collate, split_indices
from headkit.data.builtin import BUILTIN_DATASETS
from headkit.data.files import column_values
from headkit.data.readers import read_rows
from headkit.errors import DataError, DataOptionError, HeadkitError, UsageError
from headkit.heads import head_config
from headkit.heads.lm import CAUSAL_LM, MASKED_LM, LMHead
from headkit.training.config import PretrainConfig

logger = logging.getLogger(__name__)

OBJECTIVES = {"mlm": MASKED_LM, "clm": CAUSAL_LM}  # objective -> the pretraining head it trains


def read_corpus(sources: list[str], text_column: str = "text") -> list[str]:
    """Documents from text files (one per non-empty line), tables or built-in datasets."""
    if not sources:
        raise DataOptionError("no corpus: give --corpus FILE [FILE ...] (text files, CSV/JSONL, or a built-in dataset)")
    documents: list[str] = []
    for source in sources:
        path = Path(source)
        if source in BUILTIN_DATASETS or path.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet"):
            values = column_values(read_rows(source), text_column, source)
            found = [v for v in values if isinstance(v, str) and v.strip()]
        else:
            if not path.is_file():
                raise DataError(f"corpus file {source} not found")
            raw = path.read_bytes()
            if b"\x00" in raw[:65536]:
                raise DataError(f"{source} looks binary (it contains NUL bytes); the corpus must be plain text")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{source} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
                ) from e
            found = [line.strip() for line in text.splitlines() if line.strip()]
        if not found:
            raise DataError(f"corpus {source} is empty: it has no text")
        documents += found
    return documents


def check_objective(model: str, objective: str, tokenizer: Any, trust_remote_code: bool = False) -> None:
    """MLM needs a bidirectional encoder and a mask token; CLM needs a decoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if objective not in OBJECTIVES:
        raise HeadkitError(f"unknown objective '{objective}'; choose mlm or clm")
    model_type = load_config(model, trust_remote_code=trust_remote_code).model_type
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if objective == "mlm":
        if not encoder:
            raise HeadkitError(
                f"{model} is a causal (decoder) model ({model_type}): it cannot fill masks. Use --objective clm"
            )
        if tokenizer.mask_token is None:
            raise HeadkitError(f"the tokenizer of {model} has no mask token, so masked-LM training is impossible")
    elif encoder or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise HeadkitError(
            f"{model} is a bidirectional encoder ({model_type}): causal-LM training does not fit it. "
            "Use --objective mlm"
        )


def encode_corpus(documents: list[str], tokenizer: Any, objective: str, max_length: int) -> list[list[int]]:
    """MLM: each document in chunks of at most max_length tokens. CLM: packed fixed-length blocks."""
    if objective == "mlm":
        enc = tokenizer(documents, truncation=True, max_length=max_length, return_overflowing_tokens=True)
        return [ids for ids in enc["input_ids"] if len(ids) > 2]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
    blocks = [stream[i : i + max_length] for i in range(0, len(stream) - max_length + 1, max_length)]
    if not blocks:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than one block of {max_length}; add text")
    return blocks


def lm_batch(
    examples: list[dict[str, Any]], tokenizer: Any, objective: str, probability: float, seed: int | None = None
) -> dict[str, Any]:
    """Pad, then MLM: mask on the fly (seeded for evaluation); CLM: labels are the inputs."""
    from transformers import DataCollatorForLanguageModeling

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = collate(examples, pad_id, {}, {})
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if objective == "clm":
        batch["labels"] = {"lm": ids.masked_fill(mask == 0, -100)}
        return batch
    special = (mask == 0) | torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    batch_seed = None if seed is None else seed + int(batch["index"][0])
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=batch_seed)
    if batch_seed is not None:
        masker.create_rng()  # its own generator (else torch_mask_tokens draws from the global RNG)
    inputs, labels = masker.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    # A short sequence can draw no mask at all (0.85^n): then it teaches and measures nothing, so
    # one of its real tokens is masked instead.
    for row in ((labels != -100).sum(dim=1) == 0).nonzero().flatten().tolist():
        candidates = (~special[row]).nonzero().flatten()
        if len(candidates):
            pick = candidates[torch.randint(len(candidates), (1,), generator=masker.generator)].item()
            labels[row, pick], inputs[row, pick] = ids[row, pick], tokenizer.mask_token_id
    batch["input_ids"], batch["labels"] = inputs, {"lm": labels}
    return batch


def import_pretraining_head(model_name: str, head: LMHead, trust_remote_code: bool = False) -> bool:
    """Copy the checkpoint's own pretraining head into `head` when their layers line up."""
    import transformers

    from headkit.backbone import quietly_from_pretrained, split_backbone

    report = inspect_model(model_name, trust_remote_code=trust_remote_code)
    if report.head_kind != head.config.type:
        return False
    if head.config.tie_embeddings and not report.tied_embeddings:
        return False  # its own output layer would be copied over the input embeddings this head shares
    if report.tied_embeddings and head.config.tie_embeddings and len(list(head.parameters())) == 1:
        return True  # both heads are nothing but the input embeddings, which this one already shares
    source = resolve_model(model_name)
    path = dequantised(source) if source.gguf_file else source.path
    full = quietly_from_pretrained(getattr(transformers, report.architecture), path)
    layers = (nn.Linear, nn.LayerNorm)
    theirs = [m for h in split_backbone(full)[1].values() for m in h.modules() if isinstance(m, layers)]
    ours = [m for m in head.modules() if isinstance(m, layers)]
    if [type(m) for m in theirs] != [type(m) for m in ours] or any(
        a.weight.shape != b.weight.shape for a, b in zip(theirs, ours, strict=True)
    ):
        return False
    with torch.no_grad():
        for src, dst in zip(theirs, ours, strict=True):
            dst.weight.copy_(src.weight)
            if dst.bias is not None and src.bias is not None:
                dst.bias.copy_(src.bias)
    return True


def pretrain(config: PretrainConfig):
    """Continue pretraining a backbone on raw text; returns the `TrainResult` with perplexities."""
    from accelerate.utils import set_seed

    from headkit._fs import atomic_write_json
    from headkit.backbone import load_processor
    from headkit.data.tasks import PreparedData
    from headkit.model import MultiHeadModel
    from headkit.training.config import check_ranges
    from headkit.training.distributed import main_process_prints, process_state
    from headkit.training.evaluate import evaluate
    from headkit.training.loop import fit
    from headkit.training.run_dir import check_run_dir

    check_ranges(config)
    state = process_state()
    with main_process_prints(state):
        if config.strategy not in ("full", "lora"):
            raise UsageError(f"pretraining supports --strategy full or lora, not '{config.strategy}'")
        if state.is_main_process:  # refuse another run's directory before any work; fit claims it
            check_run_dir(config)
        tokenizer = load_processor(config.model, trust_remote_code=config.trust_remote_code)
        check_objective(config.model, config.objective, tokenizer, config.trust_remote_code)
        documents = read_corpus(config.corpus, config.text_column)
        max_length = input_limit(config.model, tokenizer, config.max_length, config.trust_remote_code)
        blocks = encode_corpus(documents, tokenizer, config.objective, max_length)
        data = EncodedData(blocks, {})
        train_idx, val_idx = split_indices(len(data), config.val_fraction, config.seed)
        head = head_config(OBJECTIVES[config.objective])
        prepared = PreparedData(data.subset(train_idx), data.subset(val_idx), {"lm": head})
        set_seed(config.seed)
        model = MultiHeadModel.on_backbone(config.model, {"lm": head}, trust_remote_code=config.trust_remote_code)
        model.max_length = max_length
        imported = import_pretraining_head(config.model, model.heads["lm"], config.trust_remote_code)
        logger.info(
            f"{len(documents)} documents -> {len(train_idx)} training and {len(val_idx)} held-out blocks; LM head "
            + ("from the checkpoint's own pretraining head" if imported else "new")
            + (", tied to the input embeddings" if model.heads["lm"].config.tie_embeddings else "")
        )
        make_batch = functools.partial(
            lm_batch, tokenizer=tokenizer, objective=config.objective, probability=config.mlm_probability
        )
        make_eval_batch = functools.partial(make_batch, seed=config.seed + 1)
        pad_id = tokenizer.pad_token_id or 0
        scores = evaluate(model, prepared.val, pad_id, config.batch_size, make_batch=make_eval_batch).scores
        before = scores.get("lm", {}).get("perplexity", float("nan"))  # no held-out blocks: no perplexity
        result = fit(config, model, tokenizer, prepared, make_batch=make_batch, make_eval_batch=make_eval_batch)
        scores = result.evaluation.scores if result.evaluation else {}
        after = scores.get("lm", {}).get("perplexity", float("nan"))
        result.metrics.update(perplexity_before=before, perplexity_after=after, head_imported=imported)
        if state.is_main_process:
            atomic_write_json(Path(config.output_dir) / "metrics.json", result.metrics)
            logger.info(f"held-out perplexity: {before:.2f} before -> {after:.2f} after ({len(val_idx)} blocks)")
        return result
