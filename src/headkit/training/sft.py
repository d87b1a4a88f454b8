"""Instruction tuning (supervised fine-tuning) of a causal-LM head on prompt -> response data.

    rows (prompt/response columns, or chat `messages` lists)
      -> the tokenizer's chat template (or PLAIN_TEMPLATE when it has none)
      -> token ids with labels on the response tokens only (prompt and template tokens: -100)
      -> optional packing of whole examples into max_length blocks
      -> backbone + causal-LM head (the checkpoint's own) -> the loop of `headkit train` (`fit`)
      -> RUN/model: `headkit generate RUN` answers with it (the template is saved with the tokenizer)

Each turn is tokenised on its own, prompt part then response part, exactly as `generate` later
tokenises a prompt (template with the generation prompt), so training and inference see the same
tokens. An example longer than max_length loses tokens from its start (the oldest prompt text),
never from a response; one whose responses alone do not fit is left out. Both are counted in the log.
Packing concatenates whole examples (attention crosses example borders inside a block, as in
classic packing; positions continue) and only saves padding.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from headkit.data.batching import EncodedData, collate, pad_ids, split_indices
from headkit.data.files import is_missing
from headkit.data.readers import read_rows
from headkit.errors import DataError, HeadkitError
from headkit.heads import IGNORE_INDEX, head_config
from headkit.heads.base import perplexity
from headkit.heads.lm import CAUSAL_LM
from headkit.training.config import TrainConfig

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# For tokenizers without a chat template: readable, and it renders a conversation's prefixes as
# prefixes of the whole (what response-only labels need). The end-of-sequence token ends each reply.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass
class SFTConfig(TrainConfig):
    """Instruction tuning; the other fields are those of `headkit train`.

    Attributes:
        data: a CSV/JSONL/Parquet file, built-in dataset (chatterbot_english) or hf:NAME with
            prompt/response columns or a column of chat `messages` lists ({"role", "content"}).
        eval_data: held-out data in the same form (default: --val_fraction of --data).
        prompt_column: the column holding the instruction or user message.
        response_column: the column holding the wanted reply.
        messages_column: the column holding whole conversations (used when present).
        system_prompt: a system message put before every conversation that has none.
        packing: pack whole examples into max_length blocks (less padding, faster on short texts).
    """

    model: str = "smollm2"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"
    system_prompt: str | None = None
    packing: bool = False
    strategy: Literal["full", "lora"] = "lora"
    output_dir: str = "runs/sft"
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    backbone_lr: float = 2e-5
    max_length: int = 512
    # Plainly shuffled batches: on chatterbot-corpus (benchmarks/sft.py, 100 LoRA steps) length
    # grouping was 1.5x faster but ended 0.044 higher in held-out reply loss.
    group_by_length: bool = False
    val_fraction: float = 0.1
    patience: int = 0

    def identity(self) -> dict[str, Any]:
        data = super().identity()
        data.update(data=self.data, eval_data=self.eval_data)  # the training rows are what SFT is about
        return data


def conversations(rows: list[dict[str, Any]], source: str, config: SFTConfig) -> list[list[dict[str, str]]]:
    """Rows -> chat message lists (a system message first when asked), checked for a reply."""
    if not rows:
        raise DataError(f"{source} has no rows to train on")
    use_messages = config.messages_column in rows[0]
    for column in [config.messages_column] if use_messages else [config.prompt_column, config.response_column]:
        if column not in rows[0]:
            raise DataError(
                f"{source} has no column '{column}' (its columns: {sorted(rows[0])}); give prompt/response "
                "columns (--prompt_column, --response_column) or chat messages (--messages_column)"
            )
    found = []
    for number, row in enumerate(rows, start=1):
        if use_messages:
            messages = _messages(row[config.messages_column], number, source)
        else:
            prompt, response = row[config.prompt_column], row[config.response_column]
            for name, value in (("prompt", prompt), ("response", response)):
                if is_missing(value) or not isinstance(value, str) or not value.strip():
                    raise DataError(f"row {number} of {source}: the {name} is empty; every example needs both")
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if config.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": config.system_prompt}, *messages]
        found.append(messages)
    return found


def _messages(value: Any, number: int, source: str) -> list[dict[str, str]]:
    where = f"row {number} of {source}"
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages should be a list of {{'role', 'content'}} objects, got {value!r:.80}")
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: each message needs a role ({', '.join(ROLES)}), got {message!r:.80}")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise DataError(f"{where}: a {message['role']} message has no text")
    if not any(m["role"] == "assistant" for m in value):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is no response to learn")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def use_chat_template(tokenizer: Any, name: str) -> None:
    """Keep the tokenizer's chat template, or give it PLAIN_TEMPLATE (with a note) when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return
    if tokenizer.eos_token is None:
        raise HeadkitError(
            f"the tokenizer of {name} has neither a chat template nor an end-of-sequence token, so a reply "
            "cannot be told where to stop; use an instruction model or a tokenizer with an eos token"
        )
    tokenizer.chat_template = PLAIN_TEMPLATE
    logger.info(
        f"note: the tokenizer of {name} has no chat template; using headkit's plain one (### User / ### Assistant)"
    )


def render(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its labels: the ids on assistant replies, -100 elsewhere."""

    def text(upto: int, prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)

    whole, cursor = text(len(messages)), 0
    pieces: list[tuple[str, bool]] = []  # (text, is a response)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = text(i, prompt=True), text(i + 1)
        if not (whole.startswith(through) and through.startswith(before) and len(before) >= cursor):
            raise HeadkitError(
                "the chat template does not render a conversation's beginning as the beginning of the whole "
                "conversation, so the response tokens cannot be found; use a standard template"
            )
        pieces += [(whole[cursor : len(before)], False), (whole[len(before) : len(through)], True)]
        cursor = len(through)
    pieces.append((whole[cursor:], False))
    ids: list[int] = []
    labels: list[int] = []
    for piece, is_response in pieces:
        tokens = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        ids += tokens
        labels += tokens if is_response else [IGNORE_INDEX] * len(tokens)
    return ids, labels


def fit_length(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]] | None:
    """Cut an example to max_length from its start, never inside a response; None if it cannot be."""
    over = len(ids) - max_length
    if over <= 0:
        return ids, labels
    first_response = next(i for i, y in enumerate(labels) if y != IGNORE_INDEX)
    if over > first_response:
        return None
    return ids[over:], labels[over:]


def pack(examples: list[tuple[list[int], list[int]]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Whole examples into blocks of at most max_length tokens (first fit, longest first)."""
    blocks: list[tuple[list[int], list[int]]] = []
    for ids, labels in sorted(examples, key=lambda e: -len(e[0])):
        block = next((b for b in blocks if len(b[0]) + len(ids) <= max_length), None)
        if block is None:
            blocks.append((list(ids), list(labels)))
        else:
            block[0].extend(ids)
            block[1].extend(labels)
    return blocks


def encode(
    chats: list[list[dict[str, str]]], tokenizer: Any, max_length: int, source: str, packing: bool = False
) -> EncodedData:
    """Conversations -> EncodedData with the causal-LM head's labels (response tokens only)."""
    examples, cut, dropped = [], 0, 0
    for messages in chats:
        ids, labels = render(tokenizer, messages)
        fitted = fit_length(ids, labels, max_length)
        if fitted is None:
            dropped += 1
            continue
        cut += len(fitted[0]) < len(ids)
        examples.append(fitted)
    if cut or dropped:
        logger.info(
            f"note: {source}: {cut} of {len(chats)} examples were longer than {max_length} tokens and lost prompt "
            f"tokens from their start; {dropped} were left out (their responses alone are longer)"
        )
    if not examples:
        raise DataError(f"{source}: no example fits in {max_length} tokens; raise --max_length")
    if packing:
        examples = pack(examples, max_length)
    return EncodedData([e[0] for e in examples], {"lm": [e[1] for e in examples]})


def sft_batch(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad ids (right) and response labels (with -100) to the batch's longest sequence."""
    batch = collate(examples, pad_id, {}, {})
    batch["labels"] = {"lm": pad_ids([e["labels"]["lm"] for e in examples], batch["input_ids"].shape[1])}
    return batch


def sft(config: SFTConfig):
    """Instruction-tune a causal LM; returns the `TrainResult` with held-out response loss before and after."""
    from accelerate.utils import set_seed

    from headkit._fs import atomic_write_json
    from headkit.backbone import input_limit, load_processor
    from headkit.data.tasks import PreparedData
    from headkit.model import MultiHeadModel
    from headkit.training.config import check_ranges
    from headkit.training.distributed import main_process_prints, process_state
    from headkit.training.evaluate import evaluate
    from headkit.training.loop import fit
    from headkit.training.pretrain import check_objective, import_pretraining_head
    from headkit.training.recipe import prepare_run_dir, quiet_if_asked

    quiet_if_asked(config)
    check_ranges(config)
    state = process_state()
    with main_process_prints(state):
        if config.strategy not in ("full", "lora"):
            raise HeadkitError(f"instruction tuning supports --strategy full or lora, not '{config.strategy}'")
        if not config.data:
            raise DataError("no data: give --data FILE with prompt/response columns or chat messages")
        train_chats = conversations(read_rows(config.data), config.data, config)  # bad data fails first
        if config.eval_data:
            val_chats = conversations(read_rows(config.eval_data), config.eval_data, config)
        else:
            train_idx, val_idx = split_indices(len(train_chats), config.val_fraction, config.seed)
            train_chats, val_chats = [train_chats[i] for i in train_idx], [train_chats[i] for i in val_idx]
        tokenizer = load_processor(config.model, trust_remote_code=config.trust_remote_code)
        check_objective(config.model, "clm", tokenizer, config.trust_remote_code)
        use_chat_template(tokenizer, config.model)
        max_length = input_limit(config.model, tokenizer, config.max_length, config.trust_remote_code)
        if state.is_main_process:
            prepare_run_dir(config)
        train = encode(train_chats, tokenizer, max_length, config.data, config.packing)
        val = (
            encode(val_chats, tokenizer, max_length, config.eval_data or config.data) if val_chats else EncodedData([])
        )
        head = head_config(CAUSAL_LM)
        prepared = PreparedData(train, val, {"lm": head})
        set_seed(config.seed)
        model = MultiHeadModel.on_backbone(
            config.model, {"lm": head}, trust_remote_code=config.trust_remote_code, processor=tokenizer
        )
        model.max_length = max_length
        import_pretraining_head(config.model, model.heads["lm"], config.trust_remote_code)
        logger.info(
            f"{len(train_chats)} training and {len(val_chats)} held-out conversations -> {len(train)} training "
            f"sequences{' (packed)' if config.packing else ''}; loss on response tokens only"
        )
        make_batch = functools.partial(sft_batch, pad_id=tokenizer.pad_token_id or 0)
        before = (
            evaluate(model, val, 0, config.batch_size, make_batch=make_batch).losses.get("lm") if len(val) else None
        )
        result = fit(config, model, tokenizer, prepared, make_batch=make_batch, make_eval_batch=make_batch)
        after = result.evaluation.losses.get("lm") if result.evaluation else None
        result.metrics.update(response_loss_before=before, response_loss_after=after)
        if state.is_main_process:
            atomic_write_json(Path(config.output_dir) / "metrics.json", result.metrics)
            if before is not None and after is not None:
                logger.info(
                    f"held-out response loss: {before:.3f} before -> {after:.3f} after "
                    f"(perplexity {perplexity(before):.2f} -> {perplexity(after):.2f}, {len(val)} conversations)"
                )
        return result


__all__ = ["PLAIN_TEMPLATE", "SFTConfig", "conversations", "encode", "render", "sft"]
