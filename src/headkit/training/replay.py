"""Replaying a frozen bottom: run the layers below the tuned ones once per example, not once per step.

Few-shot's all-pairs recipe tunes only the top of the backbone and embeds the same few examples
at every step; the frozen layers below give the same answer each time. `BottomReplay` runs them
once (eval mode, no gradient), keeps each example's input to the first tuned layer, and while it
is installed the frozen layers are stand-ins that pass their input through and a pre-hook puts
the kept states in. It works on the layer stack generically (any `layer_stack`), so it checks
itself: the first batch must give the same last hidden state through the replay as through the
whole network, else the replay is not used (an architecture whose layers hand each other more
than the hidden states, such as T5's position bias, fails that check and runs unreplayed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headkit.data.batching import EncodedData, collate, model_inputs
from headkit.errors import HeadConfigError
from headkit.model import LAST_LAYER, MultiHeadModel
from headkit.training.strategies import layer_stack

logger = logging.getLogger(__name__)

MAX_REPLAY_BYTES = 512 * 2**20  # kept states above this are not worth the memory: run unreplayed
CAPTURE_BATCH = 64
# the first captured batch, for the self-check: its examples, its model inputs, their last hidden state
FirstBatch = tuple[list[int], dict[str, Tensor], Tensor]


class _PassThrough(nn.Module):
    """A frozen layer's stand-in: hands its input on, shaped as the real layer's output was."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor | tuple[Tensor]:
        return (hidden_states,) if self.as_tuple else hidden_states


def _hidden_argument(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class BottomReplay:
    """The inputs of layer `start` for every example, and the means to feed them back (`install`)."""

    def __init__(self, model: MultiHeadModel, start: int) -> None:
        _, self.layers = layer_stack(model.backbone)
        self.model, self.start = model, start
        self.kept: dict[int, Tensor] = {}  # example index -> (its tokens, H) input of layer `start`
        self.frozen: list[nn.Module] = []
        self.handle: Any = None
        self.batch: tuple[list[int], Tensor] | None = None  # the examples and mask of the next forward

    # ----------------------------------------------------------------------- capture
    @torch.no_grad()
    def capture(self, data: EncodedData, ids: Sequence[int], pad_id: int) -> FirstBatch:
        """Run every example once through the whole (eval-mode) network, keeping layer `start`'s
        input. Returns the first batch's examples, inputs and last hidden state for `verify`."""
        seen: dict[str, Any] = {}

        def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["hidden"] = _hidden_argument(args, kwargs).detach()

        def shape_of(module: nn.Module, args: tuple, output: Any) -> None:
            seen["tuple"] = isinstance(output, tuple)

        hooks = [
            self.layers[self.start].register_forward_pre_hook(keep, with_kwargs=True),
            self.layers[self.start - 1].register_forward_hook(shape_of),
        ]
        first: FirstBatch | None = None
        try:
            for k in range(0, len(ids), CAPTURE_BATCH):
                chunk = list(ids[k : k + CAPTURE_BATCH])
                batch = model_inputs(collate([data[i] for i in chunk], pad_id, {}, {}), self.model.device)
                hidden = self.model.adapter(batch).hidden
                mask = batch["attention_mask"].bool()
                rows = seen["hidden"][mask].split(mask.sum(dim=1).tolist())
                self.kept.update(zip(chunk, rows, strict=True))
                if first is None:
                    first = (chunk, batch, hidden[LAST_LAYER][mask])
        finally:
            for hook in hooks:
                hook.remove()
        self.as_tuple = seen["tuple"]
        assert first is not None
        return first

    # ----------------------------------------------------------------------- replay
    def _substitute(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.batch is None:
            return None
        ids, mask = self.batch
        hidden = _hidden_argument(args, kwargs)
        if hidden.shape[:2] != mask.shape:
            raise HeadConfigError(f"layer {self.start} got {tuple(hidden.shape)} states, mask {tuple(mask.shape)}")
        replayed = hidden.new_zeros(hidden.shape)
        replayed[mask] = torch.cat([self.kept[i] for i in ids]).to(hidden.dtype)
        if args:
            return (replayed, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replayed}

    def select(self, ids: list[int], mask: Tensor) -> None:
        """The examples (rows of the data) and attention mask of the next forward pass."""
        self.batch = (ids, mask.bool())

    def install(self) -> None:
        self.frozen = [self.layers[i] for i in range(self.start)]
        for i in range(self.start):
            self.layers[i] = _PassThrough(self.as_tuple)
        self.handle = self.layers[self.start].register_forward_pre_hook(self._substitute, with_kwargs=True)

    def remove(self) -> None:
        """Put the real layers back (the backbone's state dict is whole again)."""
        for i, layer in enumerate(self.frozen):
            self.layers[i] = layer
        if self.handle is not None:
            self.handle.remove()
        self.frozen, self.handle, self.batch = [], None, None

    @torch.no_grad()
    def verify(self, first: FirstBatch) -> bool:
        """Does the installed replay give the whole network's last hidden state on the first batch?"""
        ids, batch, expected = first
        mask = batch["attention_mask"].bool()
        self.select(ids, mask)
        hidden = self.model.adapter(batch).hidden
        return torch.allclose(hidden[LAST_LAYER][mask], expected, atol=1e-4, rtol=1e-3)


def replay_bottom(
    model: MultiHeadModel, data: EncodedData, ids: Sequence[int], passes: int, start: int, pad_id: int
) -> BottomReplay | None:
    """An installed replay of layers below `start` for examples `ids`, or None where it does not pay
    or cannot work: nothing frozen, no example embedded twice (`passes` = example passes the steps
    make), heads that read a lower layer, kept states over MAX_REPLAY_BYTES, or a failed self-check."""
    if start < 1 or passes <= len(ids) or model.layers_read() != {LAST_LAYER}:
        return None
    hidden_size = getattr(model.backbone.config, "hidden_size", 0)
    if sum(len(data[i]["input_ids"]) for i in ids) * hidden_size * 4 > MAX_REPLAY_BYTES:
        logger.info("frozen layers not replayed: their kept states would exceed %d MB", MAX_REPLAY_BYTES >> 20)
        return None
    was_training = model.backbone.training
    model.backbone.eval()
    replay = BottomReplay(model, start)
    try:
        first = replay.capture(data, ids, pad_id)
        replay.install()
        works = replay.verify(first)
    except (HeadConfigError, KeyError, IndexError, TypeError, RuntimeError) as error:
        logger.debug("frozen layers not replayed: %s", error)
        works = False
    finally:
        model.backbone.train(was_training)
    if not works:
        replay.remove()
        logger.info("frozen layers not replayed: the %s stack failed the check", model.backbone.config.model_type)
        return None
    logger.info(f"layers 0-{start - 1} frozen: run once for {len(ids)} examples, replayed at every step")
    return replay
