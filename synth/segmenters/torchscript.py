"""Any other segmenter, as a TorchScript file (`torchscript:PATH`), under one fixed contract.

Input: a 1×3×H×W float32 tensor on the chosen device, RGB in [0, 1] — *not* normalised (the model
does its own normalisation and resizing), at the image's own size. Output: 1×C×h×w logits (or
probabilities: only the argmax is used); when h×w differs from H×W they are bilinearly resized
(align_corners=False) to H×W. Channel k is id k + `id_offset` in the dataset's id space, where
`id_offset` is an optional integer attribute of the scripted module (0 when absent; 1 for a
150-channel ADE20K model, whose ids start at 1). Ids must fit in uint8 (C + id_offset ≤ 256).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError
from .base import Segmenter

CONTRACT = "input 1x3xHxW float32 RGB in [0,1], unnormalised; output 1xCxhxw logits; channel k = id k + id_offset"


class TorchScriptSegmenter(Segmenter):
    name = "torchscript"

    def __init__(self, net: torch.jit.ScriptModule, device: torch.device, protocol: dict, path: Path):
        super().__init__(net, device, protocol)
        self.path = path
        self.id_offset = int(getattr(net, "id_offset", 0))

    def _predict(self, rgb: np.ndarray) -> Tensor:
        h, w = rgb.shape[:2]
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None].to(self.device)
        logits = self.net(x)
        if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[0] != 1:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise InputError(f"{self.path}: the TorchScript segmenter returned {got}; the contract is {CONTRACT}")
        if logits.shape[1] + self.id_offset > 256:
            raise InputError(f"{self.path}: {logits.shape[1]} channels + id_offset {self.id_offset} do not fit "
                             f"uint8 ids (at most 256)")
        if logits.shape[2:] != (h, w):
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return logits[0].argmax(0) + self.id_offset


def load_torchscript(path: Path, device: torch.device) -> TorchScriptSegmenter:
    try:
        net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: not a TorchScript file ({type(e).__name__}: {reason}); save the model with "
                         f"torch.jit.script(model).save(PATH)") from e
    protocol = {"segmenter": f"torchscript:{path.name}", "contract": CONTRACT,
                "id_offset": int(getattr(net, "id_offset", 0)), "scales": [1.0], "resize": "none (model's own)",
                "upsampling": "bilinear (align_corners=False) to the image size when needed, argmax",
                "image_decoder": "PIL"}
    return TorchScriptSegmenter(net, device, protocol, path)
