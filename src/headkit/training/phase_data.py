"""The data a phase of the training loop (loop.py) reads: its loader (in-memory data in seeded,
length-grouped batches; a stream read as it passes, its max_steps as one "epoch"), each epoch's
batches (past those a resumed run already did), and the backbone features a cached phase trains
on (computed or reused: training/features.py). What a stream cannot do is refused up front
(`check_stream`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from headkit.data.batching import LengthGroupedBatches
from headkit.data.streaming import CachedExamples, StreamedData
from headkit.errors import HeadkitError
from headkit.training.checkpoint import restore_rng_state
from headkit.training.features import FeatureCache, cached_features, features_needed, stream_features, weights_digest
from headkit.training.state import PhaseRun, Run, TrainState
from headkit.training.strategies import Phase

logger = logging.getLogger("headkit.training.loop")  # the loop's notes, under the loop's name as before


def check_stream(run: Run) -> None:
    """Refuse, before any work, what a stream cannot do: count epochs without max_steps, resume,
    run on several processes."""
    config = run.config
    if config.resume:
        raise HeadkitError("resuming a run that trains on a stream is not supported yet; start it again")
    if run.accelerator.num_processes > 1:
        raise HeadkitError("training on a stream runs on one process for now; launch it without accelerate launch")
    reading = [p.name for p in run.strategy.phases(config) if not p.cached]
    if reading and not getattr(config, "max_steps", None):
        raise HeadkitError(
            f"the training data is a stream (datasets.IterableDataset), which has no length to count epochs by: "
            f"give max_steps (optimizer steps, as transformers' Trainer needs for such data) for the phase(s) "
            f"{reading} of strategy {run.strategy.name}, or bound the stream and load it as a Dataset; "
            "strategy frozen needs none (one pass caches the stream's features, then its epochs run on the cache)"
        )


def phase_loader(
    run: Run, phase: Phase, max_steps: int | None, min_steps: int | None = 0
) -> tuple[Phase, LengthGroupedBatches | None, Any, int | None]:
    """The phase's loader over its training data (the cached examples of a stream in a cached
    phase), with the phase's epochs as they end up (as many as `max_steps` needs, or enough for
    `min_steps` where its own are fewer), the batch sampler (None: a stream's own order) and,
    when `max_steps` sets the phase's length, the batches of its last epoch."""
    config = run.config
    train = run.cached_train if phase.cached and run.streamed else run.data.train
    last_batches = None
    if isinstance(train, StreamedData):  # the stream's own order, read as it passes: max_steps as one "epoch"
        sampler, loader = None, train.loader(config.batch_size, run.make_batch)
        phase = dataclasses.replace(phase, epochs=1)
    else:
        assert train is not None  # a cached phase over a stream has its examples by now
        assert config.batch_size is not None  # TrainConfig.__post_init__ filled the strategy's default
        sampler = LengthGroupedBatches(
            train.lengths(), config.batch_size, seed=config.seed, group=config.group_by_length,
            short_last=run.accelerator.num_processes > 1,
        )  # fmt: skip
        make_batch = (run.make_cached_batch or run.make_batch) if phase.cached else run.make_batch
        loader = DataLoader(train, batch_sampler=sampler, collate_fn=make_batch)
        # optimizer steps an epoch: each process steps through its share of the batches (accelerate
        # gives every process the same number, the last round filled from the start: the short
        # batch comes last, see LengthGroupedBatches)
        batches = math.ceil(len(loader) / run.accelerator.num_processes)
        per_epoch = math.ceil(batches / config.grad_accum)
        if max_steps:  # the epochs the steps need, the last one cut short
            phase = dataclasses.replace(phase, epochs=math.ceil(max_steps / per_epoch))
            last_batches = min(batches, (max_steps - (phase.epochs - 1) * per_epoch) * config.grad_accum)
        elif min_steps:  # small data: more epochs, whole ones
            epochs = max(phase.epochs, math.ceil(min_steps / per_epoch))
            if run.main and epochs > phase.epochs:
                logger.info(
                    f"phase '{phase.name}': {epochs} epochs instead of {phase.epochs}, to train at least "
                    f"--min_steps {min_steps} optimizer steps ({per_epoch} an epoch on this data)"
                )
            # early stopping counts epochs: on data this small a few of them are a few steps, the
            # ones a head spends leaving chance level (validation F1 0 at first), so it waits for them
            every = max(1, epochs // max(1, phase.epochs))
            phase = dataclasses.replace(
                phase, epochs=epochs, min_epochs=math.ceil(min_steps / per_epoch), checkpoint_every=every
            )
    return phase, sampler, loader, last_batches


def epoch_batches(run: Run, current: PhaseRun, state: TrainState) -> tuple[Iterator, int]:
    """This epoch's batches in their seeded order, past the ones a resumed run already did.

    The epoch is set on the batch sampler itself (under several processes accelerate wraps it in
    a shard that does not pass set_epoch on) and on the loader (accelerate's loaders call
    set_epoch with their own pass count on every iteration): a resumed run then sees the same
    batch order. A resumed run
    restores the RNG state before the iterator's first draw at an epoch boundary, and after it
    mid-epoch (the saved state already includes the loader's draw, made at the first batch).
    """
    if current.sampler is None:
        return _stream_batches(current), 0
    loader, skip = current.loader, state.batches_done
    current.sampler.set_epoch(state.epoch)
    loader.set_epoch(state.epoch)
    batches = run.accelerator.skip_first_batches(loader, skip) if skip else loader
    if skip:
        batches.set_epoch(state.epoch)
    if current.rng_pending and not skip:
        restore_rng_state(run.checkpoint_dir)
        current.rng_pending = False
    iterator = iter(batches)
    if current.rng_pending:
        first = next(iterator, None)
        iterator = itertools.chain([] if first is None else [first], iterator)
        restore_rng_state(run.checkpoint_dir)
        current.rng_pending = False
    return iterator, skip


def _stream_batches(current: PhaseRun) -> Iterator[dict[str, Any]]:
    """A stream's batches, pass after pass (pass k in the stream's k-th order) until the caller
    has its steps; a pass that gives nothing is an error, not an endless loop."""
    for passes in itertools.count():
        current.loader.set_epoch(passes)
        empty = True
        for batch in current.loader:
            empty = False
            yield batch
        if empty:
            raise HeadkitError("the training stream gave no examples")


def cache_features(run: Run) -> None:
    """The backbone's features a cached phase trains on (`run.caches`): the training data's (a
    stream's in one pass, with its examples as `run.cached_train`) and the validation data's."""
    digest = weights_digest(run.model.backbone)  # hashed once for both datasets
    if run.streamed:
        run.caches["train"], run.cached_train = _stream_features(run)
    else:
        run.caches["train"] = _features(run, run.data.train, digest)
    if len(run.data.val):
        run.caches["val"] = _features(run, run.data.val, digest)


def _features(run: Run, data, digest: str) -> FeatureCache:
    """The backbone's features for `data`, from the cache or computed: under several processes
    each computes a share of the batches, a sum joins them, and rank 0 writes the file."""
    model, accelerator = run.model, run.accelerator
    poolings, token_layers = features_needed(model)
    shares = accelerator.num_processes
    cache, hit = cached_features(
        model,
        data,
        poolings,
        token_layers,
        batch_size=64,
        pad_id=run.pad_id,
        progress=run.config.progress and run.main,
        backbone_digest=digest,
        shard=(accelerator.process_index, shares),
        total=(lambda t: accelerator.reduce(t.to(accelerator.device), "sum").cpu()) if shares > 1 else None,
        write=run.main,
    )
    accelerator.wait_for_everyone()  # the file is whole before anyone goes on
    if run.main:
        how = f"computed by {shares} processes, a share each," if shares > 1 else "computed"
        done = "reused from cache" if hit else how + " and cached"
        logger.info(f"backbone features for {len(data)} examples: {done}")
    return cache


def _stream_features(run: Run) -> tuple[FeatureCache, CachedExamples]:
    """One pass over the training stream: its backbone features (disk-backed) and its examples."""
    poolings, token_layers = features_needed(run.model)
    data = run.data.train
    assert isinstance(data, StreamedData)  # only a streamed run gets here
    cache, labels = stream_features(
        run.model,
        data.chunks(),
        poolings,
        token_layers,
        batch_size=64,
        pad_id=run.pad_id,
        progress=run.config.progress and run.main,
    )
    if run.main:
        logger.info(f"backbone features for the {len(data)} examples of the stream: computed in one pass")
    return cache, CachedExamples.join(cache.offsets, labels, run.data.head_types)
