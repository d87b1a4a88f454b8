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

Packing lays whole examples end to end in max_length blocks and only saves padding: a packed batch
trains to the token-weighted mean loss of the same examples unpacked. Each block carries position ids that restart
at 0 where an example starts (the padding tail is a segment of its own, labels -100) and no attention
mask; without a mask or KV cache transformers reads restarting positions as example borders
(block-diagonal causal attention, or varlen flash attention). The first token of each example is no
target (unpacked nothing predicts it). `packed_attention` probes the backbone first and refuses one
that would still let an example see the one before it (OPT builds its mask without the position
ids; BLOOM has none; Mamba carries state along the row).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headkit.data.batching import EncodedData, collate, split_indices
from headkit.data.files import is_missing
from headkit.data.readers import read_rows
from headkit.errors import DataError, DataOptionError, HeadkitError, UsageError
from headkit.heads import IGNORE_INDEX, head_config
from headkit.heads.codecs.base import pad_ids
from headkit.heads.lm import CAUSAL_LM
from headkit.heads.scoring import perplexity
from headkit.training.config import SFTConfig

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


@dataclass
class Block:
    """Whole examples laid end to end: ids, labels, and positions that restart at 0 for each example."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, ids: list[int], labels: list[int]) -> None:
        """Append one example; its first token is no target, as unpacked (nothing before it is its own)."""
        self.ids += ids
        self.labels += [IGNORE_INDEX, *labels[1:]]
        self.positions += range(len(ids))


def pack(examples: list[tuple[list[int], list[int]]], max_length: int) -> list[Block]:
    """Whole examples into blocks of at most max_length tokens (first fit, longest first)."""
    blocks: list[Block] = []
    for ids, labels in sorted(examples, key=lambda e: -len(e[0])):
        block = next((b for b in blocks if len(b.ids) + len(ids) <= max_length), None)
        if block is None:
            block = Block()
            blocks.append(block)
        block.add(ids, labels)
    return blocks


@dataclass
class PackedData(EncodedData):
    """Packed blocks: EncodedData plus each block's `positions` (where its examples start), which
    `sft_batch` turns into position ids so that attention stays inside each example."""

    positions: list[list[int]] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "position_ids": self.positions[i]}

    def subset(self, indices: list[int] | np.ndarray) -> PackedData:
        part = super().subset(indices)
        return PackedData(part.input_ids, part.labels, positions=[self.positions[int(i)] for i in indices])


def encode(
    chats: list[list[dict[str, str]]], tokenizer: Any, max_length: int, source: str, packing: bool = False
) -> EncodedData:
    """Conversations -> EncodedData with the causal-LM head's labels (response tokens only); with
    `packing`, PackedData whose rows are blocks of whole examples."""
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
        blocks = pack(examples, max_length)
        return PackedData(
            [b.ids for b in blocks], {"lm": [b.labels for b in blocks]}, positions=[b.positions for b in blocks]
        )
    return EncodedData([e[0] for e in examples], {"lm": [e[1] for e in examples]})


def padded_positions(positions: list[list[int]], width: int) -> torch.Tensor:
    """(B, width) position ids: each block's, then 0, 1, ... over its padding tail, which so becomes
    a segment of its own (the real tokens never see it, and its labels are -100)."""
    return torch.tensor([[*p, *range(width - len(p))] for p in positions], dtype=torch.long)


def sft_batch(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad ids (right) and response labels (with -100) to the batch's longest sequence. Packed
    blocks get position ids instead of an attention mask: transformers only reads restarting
    positions as example borders when no 2D mask is given."""
    batch = collate(examples, pad_id, {}, {})
    width = batch["input_ids"].shape[1]
    batch["labels"] = {"lm": pad_ids([e["labels"]["lm"] for e in examples], width)}
    if "position_ids" in examples[0]:
        del batch["attention_mask"]
        batch["position_ids"] = padded_positions([e["position_ids"] for e in examples], width)
    return batch


def _without_cache(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """A forward pre-hook: a packed call (position ids, no attention mask) gets use_cache=False,
    since transformers detects packed sequences only without a KV cache, and decoders make one by
    default (config.use_cache), in training too."""
    if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is None:
        return args, {"use_cache": False, **kwargs}
    return None


def sees_across_examples(model: Any, length: int = 4) -> bool:
    """Whether an example's outputs change when only the tokens of the example packed before it
    change: the backbone then attends (or carries state) across the border. Probed on two packed
    rows that share their second example; kept-apart examples give the same outputs up to rounding."""
    vocab = model.backbone.get_input_embeddings().num_embeddings
    ids = torch.arange(3 * length).remainder(vocab - 1) + 1  # any tokens but id 0
    first, other, second = ids[:length], ids[length : 2 * length], ids[2 * length :]
    input_ids = torch.stack([torch.cat([first, second]), torch.cat([other, second])]).to(model.device)
    positions = torch.arange(length).repeat(2).expand(2, -1).to(model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(input_ids=input_ids, position_ids=positions).outputs.values()
    except TypeError:  # a backbone without position ids (or a KV-cache switch) cannot be told the borders
        return True
    finally:
        model.train(was_training)
    for out in outputs:
        if tuple(out.shape[:2]) != tuple(input_ids.shape):  # a pooled head's (B, H): no per-token outputs
            continue
        a, b = out[0, length:].float(), out[1, length:].float()
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max().clamp(min=1e-6))):
            return True
    return False


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """While inside, packed batches (`sft_batch` of PackedData) keep each example's attention to
    itself; refuses, with one line, a backbone that would let packed examples see each other."""
    handle = model.register_forward_pre_hook(_without_cache, with_kwargs=True)
    try:
        if sees_across_examples(model):
            kind = model.backbone.config.model_type
            raise HeadkitError(
                f"--packing: in the {kind} backbone a packed example would see the examples before it "
                "(transformers does not read restarting position ids as example borders for it); train without "
                "--packing"
            )
        yield
    finally:
        handle.remove()


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
    from headkit.training.run_dir import check_run_dir

    check_ranges(config)
    state = process_state()
    with main_process_prints(state):
        if config.strategy not in ("full", "lora"):
            raise UsageError(f"instruction tuning supports --strategy full or lora, not '{config.strategy}'")
        if state.is_main_process:  # refuse another run's directory before any work; fit claims it
            check_run_dir(config)
        if not config.data:
            raise DataOptionError("no data: give --data FILE with prompt/response columns or chat messages")
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
        with packed_attention(model) if config.packing else contextlib.nullcontext():
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


__all__ = [
    "PLAIN_TEMPLATE",
    "PackedData",
    "SFTConfig",
    "conversations",
    "encode",
    "packed_attention",
    "render",
    "sft",
    "sft_batch",
]
