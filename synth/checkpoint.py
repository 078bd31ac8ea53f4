"""Reading resail checkpoints: always `weights_only=True` (no unpickling), checked for their format."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError


def read_checkpoint(path: str | Path, fmt: str, map_location="cpu", *, what: str | None = None,
                    missing_fix: str = "", corrupt_fix: str = "") -> dict:
    """The checkpoint dict at `path`, whose "format" field must be `fmt`; one-line errors otherwise.
    `missing_fix` / `corrupt_fix` tell the user what to do in each case."""
    path = Path(path)
    kind = what or fmt.split("/")[0]
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {kind} checkpoint" + (f"; {missing_fix}" if missing_fix else "")) from None
    except Exception as e:
        raise InputError(f"{path}: unreadable or corrupt {kind} checkpoint ({type(e).__name__}: {e})"
                         + (f"; {corrupt_fix}" if corrupt_fix else "")) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise InputError(f"{path}: not a resail {kind} checkpoint (expected format {fmt!r})")
    return ckpt
