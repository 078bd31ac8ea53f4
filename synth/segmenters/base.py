"""What the three published segmenters share: the `Segmenter` interface, the exact-key loader of the
authors' weight files, and which decoder reads its images.

Each published file is a bare `torch.save(state_dict())` in the legacy (non-zip) format; it is read
with `weights_only=True` and checked against the *published layout* — the ordered key → shape listing
the authors' module produces — before a single tensor is copied. Keys are matched exactly: the
CSAILVision files carry, beside every BatchNorm's `running_mean`, a `_tmp_running_mean` buffer of the
same shape (their synchronized BatchNorm's bookkeeping), so a loader that matched by suffix or by
position would pick the wrong tensor. Those extras are part of the published layout and are dropped by
name. Bookkeeping buffers that inference never reads may be absent without harm: the extras (a file
re-saved with plain BatchNorm) and `num_batches_tracked` (the DRN file predates it); every other key
must be present with its published shape, and no key may be foreign.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...common import read_rgb
from ...errors import InputError

NUM_BATCHES_TRACKED = "num_batches_tracked"
# Buffers the CSAILVision synchronized BatchNorm registers after PyTorch's own; never read at inference.
SYNC_BN_EXTRAS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")


@dataclass(frozen=True)
class Published:
    """How one published weight file looks: what the error messages call it, and its layout rules."""

    what: str  # "a DRN-D-105 Cityscapes state dict"
    count: int  # tensors in the published file
    signature: str  # one key that identifies it, e.g. "seg.weight"
    url: str  # where the authors publish it
    num_batches_tracked: bool = True  # the published file carries BatchNorm's num_batches_tracked
    sync_bn_extras: bool = False  # ... and CSAILVision's synchronized-BatchNorm buffers

    def describe(self, layout: dict[str, tuple[int, ...]]) -> str:
        return f"{self.what} ({self.count} tensors, {self.signature} {_shape(layout[self.signature])})"


def _shape(shape) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def published_layout(net: nn.Module, spec: Published) -> dict[str, tuple[int, ...]]:
    """The key → shape listing of the authors' file for `net`, in the authors' order."""
    layout: dict[str, tuple[int, ...]] = {}
    for name, module in net.named_modules():
        prefix = f"{name}." if name else ""
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if key == NUM_BATCHES_TRACKED and not spec.num_batches_tracked:
                continue
            layout[prefix + key] = tuple(tensor.shape)
        if spec.sync_bn_extras and isinstance(module, nn.BatchNorm2d):
            shapes = ((module.num_features,), (module.num_features,), (1,))
            layout.update({prefix + key: shape for key, shape in zip(SYNC_BN_EXTRAS, shapes)})
    return layout


def read_state_dict(path: Path, spec: Published, layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The tensors of the file at `path`, refused with one line unless they follow `layout`."""
    expected = spec.describe(layout)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; expected {expected}, from {spec.url}") from None
    except Exception as e:  # a truncated or foreign file: torch raises many types, each means "not this file"
        raise InputError(f"{path}: not a readable torch weight file ({_load_failure(e)}); expected {expected}; "
                         f"download it again from {spec.url}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = f" with keys {list(state)[:5]}" if isinstance(state, dict) else ""
        raise InputError(f"{path}: expected {expected}, a bare state dict; got a {type(state).__name__}{keys}")
    problems = _layout_problems(state, layout)
    if problems:
        raise InputError(f"{path}: expected {expected}; got {len(state)} tensors: {problems}")
    return state


def _load_failure(e: Exception) -> str:
    """One short reason for a failed torch.load (torch's own messages run to paragraphs)."""
    text = str(e)
    if isinstance(e, EOFError) or "unexpected EOF" in text:
        return "the file is truncated"
    if "WeightsUnpickler error:" in text:
        detail = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        return f"it is not a plain tensor pickle: {detail[0].split('. ')[0][:120] if detail else 'unsupported content'}"
    return f"{type(e).__name__}: {(text.strip().splitlines() or [''])[0][:160]}"


def _layout_problems(state: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]]) -> str:
    def optional(key: str) -> bool:  # bookkeeping buffers that inference never reads
        return key.rsplit(".", 1)[-1] in (NUM_BATCHES_TRACKED, *SYNC_BN_EXTRAS)

    missing = [k for k in layout if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in layout and not optional(k)]
    reshaped = [f"{k} {_shape(state[k].shape)} (not {_shape(layout[k])})" for k in layout
                if k in state and tuple(state[k].shape) != layout[k]]
    parts = [f"{len(found)} {label} (first: {', '.join(found[:3])})"
             for label, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
             if found]
    return "; ".join(parts)


def load_published(net: nn.Module, path: Path, spec: Published) -> None:
    """Copy the weights of the authors' file at `path` into `net`, by exact key."""
    state = read_state_dict(path, spec, published_layout(net, spec))
    used = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in SYNC_BN_EXTRAS}
    # Not strict only because num_batches_tracked may be absent (the DRN file predates it): the layout
    # check above refused every other missing or unexpected key.
    net.load_state_dict(used, strict=False)


class Segmenter:
    """A loaded segmenter. `predict(rgb)` maps an H×W×3 uint8 RGB image to an H×W uint8 map of ids in
    its dataset's id space; `protocol` records how (for metrics.json); `decoder` names the image
    decoder its authors read files with (`common.read_rgb`: "pil" or "cv2")."""

    name: str = ""
    decoder: str = "pil"

    def __init__(self, net: nn.Module, device: torch.device, protocol: dict[str, Any]):
        self.net = net.to(device).eval()
        self.device = device
        self.protocol = protocol

    def read_image(self, path: Path) -> np.ndarray:
        return read_rgb(path, self.decoder)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"{self.name}: expected an H×W×3 uint8 RGB image; got {rgb.shape} {rgb.dtype}")
        with torch.inference_mode():
            ids = self._predict(np.ascontiguousarray(rgb))
        return ids.to(torch.uint8).cpu().numpy()

    def _predict(self, rgb: np.ndarray) -> torch.Tensor:
        """H×W integer ids of one image."""
        raise NotImplementedError
