"""Build every network of a preset in one call, and count their parameters."""

from __future__ import annotations

from torch import nn

from .discriminator import MultiscaleDiscriminator, build_discriminator
from .generator import Generator, build_generator
from .presets import NetworkPreset, get_preset
from .segnet import SegNet, build_segnet


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build_networks(preset: NetworkPreset, device=None) -> tuple[Generator, MultiscaleDiscriminator, SegNet]:
    return build_generator(preset, device), build_discriminator(preset, device), build_segnet(preset, device)


def model_summary(preset: NetworkPreset | str) -> dict:
    """Parameter counts of G, D and the segmentation network, built on the meta device (no memory)."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    G, D, S = build_networks(preset, device="meta")
    return {"preset": preset.name, "G": count_parameters(G), "D": count_parameters(D), "segnet": count_parameters(S)}
