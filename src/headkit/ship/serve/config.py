"""What a server allows: request limits and batching (`ServeLimits`, shown by /metadata) and who may
call it (`ServeAccess`, never shown or logged)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from headkit.data import MAX_TOKENS

API_KEY_ENV = "HEADKIT_API_KEY"  # read when --api_key is not given, so the key stays out of `ps` and shell history
ADMIN_KEY_ENV = "HEADKIT_ADMIN_KEY"


@dataclass
class ServeLimits:
    """What one request may ask for, and how the server batches."""

    max_texts: int = 64  # texts per request (more: 413)
    max_chars: int = 20_000  # characters per text (more: 413); longer token sequences are truncated
    max_body_bytes: int = 2_000_000  # request body size, counted on the bytes read (more: 413)
    timeout_s: float = 30.0  # a request waiting longer gets a 504
    max_batch_texts: int = 128  # texts gathered from queued requests into one prediction call
    batch_wait_ms: float = 2.0  # how long the worker waits for more requests to fill a batch
    forward_batch: int = 16  # at most this many texts per forward pass within a gathered batch, grouped by length
    max_tokens: int | None = MAX_TOKENS  # at most this many padded tokens (texts x longest length) per pass
    max_new_tokens: int = 64  # the most tokens a generated text may have (a request may ask for fewer)
    # requests waiting for the worker; more, or more work queued than it can finish within timeout_s,
    # is answered 429 with Retry-After at once instead of a 504 after the wait
    max_queue: int = 256


@dataclass(frozen=True)
class ServeAccess:
    """Who may call the server. `api_key`: every route but /health and /ready needs
    `Authorization: Bearer <key>`. `admin_key`: the /admin routes (loading and unloading heads)
    exist only with one, and need it. `heads_dir`: the folder those routes load head saves from
    (a request names a save inside it, never an arbitrary path). `cors_origins`: browser origins
    allowed to call the server (none by default: no CORS headers at all)."""

    api_key: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    heads_dir: str | os.PathLike | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.heads_dir is not None:  # absolute, so a save's path can be checked to lie inside it
            object.__setattr__(self, "heads_dir", Path(self.heads_dir).resolve())

    @property
    def heads_folder(self) -> Path | None:
        """`heads_dir`, resolved."""
        return None if self.heads_dir is None else Path(self.heads_dir)

    @classmethod
    def from_options(
        cls,
        api_key: str | None = None,
        admin_key: str | None = None,
        heads_dir: str | os.PathLike | None = None,
        cors_origins: tuple[str, ...] | list[str] = (),
    ) -> ServeAccess:
        """Keys given, else the environment's (HEADKIT_API_KEY, HEADKIT_ADMIN_KEY); an empty key is none."""
        return cls(
            api_key=api_key or os.environ.get(API_KEY_ENV) or None,
            admin_key=admin_key or os.environ.get(ADMIN_KEY_ENV) or None,
            heads_dir=heads_dir or None,
            cors_origins=tuple(cors_origins),
        )
