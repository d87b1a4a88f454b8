"""Several processes: who is rank 0, who prints, and which of accelerate's modes headkit trains with.

Under `torchrun` or `accelerate launch`, every process runs the same recipe on its share of the
batches (DDP); rank 0 alone prints and writes the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from headkit.errors import HeadkitError


def process_state():
    """accelerate's view of the processes (rank, world size), set up as `setup` will: on a machine
    without a GPU, `torchrun` / `accelerate launch` processes form a gloo group over CPUs."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def main_process_prints(state: Any) -> Iterator[None]:
    """Only rank 0 prints (notes, epochs, the summary); the other processes' stdout and headkit's
    log records below WARNING are discarded. Errors still reach stderr from every process."""
    if state.is_main_process:
        yield
        return
    logger = logging.getLogger("headkit")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        logger.setLevel(level)


def check_distributed(accelerator: Any) -> None:
    """headkit trains with DDP (or one process); other accelerate modes are refused, not half-run."""
    from accelerate.utils import DistributedType

    supported = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if accelerator.distributed_type not in supported:
        raise HeadkitError(
            f"accelerate is set up for {accelerator.distributed_type.value}, which headkit does not train with yet; "
            "it runs on one device or data-parallel (DDP) over several: accelerate launch --multi_gpu "
            "(or torchrun --nproc_per_node N) -m headkit train ... (FSDP and DeepSpeed are not supported)"
        )
