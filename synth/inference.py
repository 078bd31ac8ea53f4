"""One loaded run for inference: what `resail eval`, `resail synthesize` and `resail serve` share.

`LoadedRun.load(work, run)` reads, once and in this order, everything that turns a label map into
a picture with a trained run:

  snapshot (the run's latest, or a given one)  → G_ema and the run's config   (synth/checkpoint.py)
  the work dir's segment manifest              → dataset, class ids, names, thing flags
  the run's config                             → its label table (`LabelChannels`); with the
                                                 class table, the run's `Vocabulary` (labels/)
  the guidance bake's manifest (val, else train) → its parameters (`bake`): K', max score, composition

and then does the jobs the three commands had each written for themselves:

  `labels.read(path)`, `labels.check`  a label map as users have it (class ids in any of the
                         dataset's id spaces, or a colour map in its palette: labels/files.py)
                         → native ids, checked against the class table and the run's label table
  `at_size(label_map)`   it at the model size, as the trainer resizes the dataset's maps
  `guidance(label_map)`  label map → decomposition with the store's rules → retrieval (FAISS
                         prefilter + exact rerank) → a `LabelMapGuidance`, whose per-segment
                         choice the caller may redraw before composing the guidance image
  `generate(label_map, guidance)`  native ids + guidance image → G_ema → uint8 picture, through
                         the run's label table exactly as the trainer fed G (`render` for
                         batches already in channel ids, as eval's loader yields them)

Nothing here imports the trainer: inference needs a snapshot, never the training state. The
retrieval index opens on first use and stays open (a server reuses it for every request).

A run's generator may read no guidance (SPADE, CLADE: a `--norm` baseline or a generator from
`resail model import`, docs/baselines.md): `guidance` then retrieves nothing and returns a
`NoGuidance`, and `extras` gives the inputs such a generator reads instead (SPADE's instance
edge map, CLADE-ICPE's positional maps), computed from the label and instance maps as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..choices import SPLITS
from ..pipeline.labels.spaces import LabelChannels
from ..pipeline.labels.vocabulary import Vocabulary
from ..workdir import WorkDir
from .baselines.extras import NoGuidance, image_extras
from .checkpoint import find_snapshot, load_snapshot
from .config import TrainConfig
from .data import label_input, label_resize, to_tensor, to_uint8
from .distributed import resolve_device
from .generator import Generator


def bake_params(work: str | Path) -> dict:
    """The parameters of the guidance bake (val, else train; {} when neither is baked), so that a
    user's label map gets guidance built like the guidance the run was trained and evaluated with."""
    wd = WorkDir(work)
    for split in reversed(SPLITS):
        m = wd.guidance_manifest(split)
        if m is not None:
            return m["params"]
    return {}


@dataclass
class LoadedRun:
    """A trained run, ready to generate. Build it with `LoadedRun.load`."""

    work: WorkDir
    name: str
    snapshot: Path
    step: int
    G: Generator                      # G_ema, eval mode, no gradients
    config: TrainConfig
    device: torch.device
    labels: Vocabulary                # the work dir's class table and the run's label table
    bake: dict                        # the guidance bake's parameters (`bake_params`)
    _index: object = field(default=None, repr=False)

    @classmethod
    def load(cls, work: str | Path, run: str, checkpoint: str | Path | None = None,
             device: str | torch.device = "auto") -> "LoadedRun":
        """Run `run` of `work` from `checkpoint` (default: its latest snapshot) on `device`
        (`auto`, `cpu`, `cuda:N` … as `resolve_device` reads it)."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        snap = load_snapshot(find_snapshot(work, run, checkpoint), device)
        wd = WorkDir(work)
        manifest = wd.require_segments()
        wd.check_run_lineage(run)  # a warning when the run was trained on another segment store
        labels = Vocabulary.of_store(manifest, LabelChannels.of(snap.config.net), f"run {run!r}")
        return cls(work=wd, name=run, snapshot=snap.path, step=snap.step, G=snap.G_ema, config=snap.config,
                   device=device, labels=labels, bake=bake_params(wd.root))

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the pictures G makes."""
        return self.config.net.width, self.config.net.height

    # What eval reads of the vocabulary.
    @property
    def dataset(self) -> str:
        return self.labels.dataset

    @property
    def uses_guidance(self) -> bool:
        """Whether the run's G reads retrieval guidance (RESAIL's norm); else nothing is retrieved."""
        return self.config.net.guided

    @property
    def class_ids(self) -> list[int]:
        return self.labels.class_ids

    @property
    def names(self) -> dict[int, str]:
        return self.labels.names

    @property
    def channels(self) -> LabelChannels:
        return self.labels.channels

    def at_size(self, label_map: np.ndarray) -> np.ndarray:
        """H×W native ids → int64 at the model size, nearest-resized as the run's training data was
        (the recipe's rule, PIL's for imported generators: `synth.data.label_resize`)."""
        W, H = self.size
        return label_resize(self.config)(label_map, H, W).astype(np.int64)

    def extras(self, label_map: np.ndarray, instance_map: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The edge map (1×H×W) and positional maps (2×H×W) the run's G reads, at the model size, from
        a label map (native ids) and its instance map at their own size; {} for a RESAIL run."""
        return image_extras(self.config.net, self.dataset, label_map, instance_map, self.size,
                            resize=label_resize(self.config))

    # ---------------------------------------------------------------- guidance

    def open_index(self):
        """The work dir's `RetrievalIndex`, opened on the first call and kept (shards load lazily, then stay)."""
        if self._index is None:
            from ..index.retrieval import RetrievalIndex

            self._index = RetrievalIndex(self.work.root)
        return self._index

    def guidance(self, label_map: np.ndarray, instance_map: np.ndarray | None = None, *, k: int,
                 seed: int | None = None, where: str = "label map"):
        """Decompose `label_map` (native ids, any size) with the store's rules, retrieve the top-k
        training segments of each segment, and return the `LabelMapGuidance` that composes them
        at the model size (every segment on its best match, or with `seed` on a drawn one). A run
        whose G reads no guidance retrieves nothing: a `NoGuidance`."""
        if not self.uses_guidance:
            return NoGuidance(self.size)
        from ..index.search import SearchConfig
        from ..pipeline.guidance import LabelMapGuidance, query_label_map

        baked = {name: self.bake[name] for name in ("k_prefilter", "max_score") if name in self.bake}
        index = self.open_index()
        found = query_label_map(index, label_map, instance_map, SearchConfig(k=k, **baked), where=where)
        # the crops come from the store version the index was built on (the index's snapshot)
        return LabelMapGuidance(index.work, found.segments, found.result, found.label_hw, size=self.size,
                                mode=self.bake.get("compose_mode", "clean"), seed=seed, where=where)

    # ---------------------------------------------------------------- G

    @torch.no_grad()
    def forward(self, label: torch.Tensor, guidance: torch.Tensor, extras: dict | None = None) -> torch.Tensor:
        """G_ema's B×3×H×W output in [−1, 1]: B×H×W channel ids of the run's table, B×3×H×W guidance
        in [−1, 1] (unread by a baseline G), and the batched `extras` the run's G reads ("edges"
        B×1×H×W, "dist" B×2×H×W)."""
        net, extras = self.config.net, extras or {}
        edges = extras.get("edges")
        m = label_input(net, label.to(self.device), None if edges is None else edges.to(self.device))
        dist = extras["dist"].to(self.device) if net.icpe else None
        return self.G(m, guidance.to(self.device) if net.guided else None, dist)

    def render(self, label: torch.Tensor, guidance: torch.Tensor, extras: dict | None = None) -> np.ndarray:
        """`forward` as B×H×W×3 uint8."""
        return to_uint8(self.forward(label, guidance, extras))

    def generate(self, label_map: np.ndarray, guidance: np.ndarray, where: str = "label map",
                 extras: list[dict] | None = None) -> np.ndarray:
        """B×H×W native ids at the model size + B×H×W×3 uint8 guidance (+ one `extras` dict per image
        for a baseline G) → B×H×W×3 uint8."""
        label = self.channels.to_channels(label_map, where)                 # B×H×W channel ids
        g = torch.stack([to_tensor(x) for x in guidance])                   # B×3×H×W
        batched = {k: torch.from_numpy(np.stack([e[k] for e in extras])) for k in extras[0]} if extras else None
        return self.render(torch.from_numpy(label), g, batched)
