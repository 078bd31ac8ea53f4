"""synth networks: reference parameter counts, shapes, RESAIL module semantics, spectral-norm placement."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from builders.runs import tiny_preset
from resail.errors import InputError
from resail.synth.discriminator import MultiscaleDiscriminator, build_discriminator
from resail.synth.generator import Generator, ResBlock, build_generator
from resail.synth.networks import model_summary
from resail.synth.norms import ResailNorm, SpadeNorm, adain
from resail.synth.presets import PRESETS, NetworkPreset, get_preset
from resail.synth.segnet import SegNet, build_segnet

# Reference §9: the official networks instantiated with default options.
REFERENCE = {
    "ade20k": {"G": 134_558_055, "D": 11_342_082, "segnet": 22_258_839},
    "cityscapes": {"G": 126_272_871, "D": 11_104_514, "segnet": 22_251_299},
    "cocostuff": {"G": 136_843_623, "D": 11_407_618, "segnet": 22_260_919},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(labels, n).permute(0, 3, 1, 2).float()  # B×L×H×W


def random_inputs(preset: NetworkPreset, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = preset.height, preset.width
    coarse = torch.randint(0, preset.semantic_nc, (batch, 1, h // 8, w // 8), generator=g).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    guidance = torch.rand(batch, 3, h, w, generator=g) * 2 - 1
    return one_hot(labels, preset.semantic_nc), guidance


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_counts_match_reference(name):
    counts = model_summary(name)
    for net, ref in REFERENCE[name].items():
        assert abs(counts[net] - ref) <= 0.01 * ref, (name, net, counts[net], ref)


def test_presets_match_reference_settings():
    ade, city, coco = PRESETS["ade20k"], PRESETS["cityscapes"], PRESETS["cocostuff"]
    assert (ade.semantic_nc, ade.width, ade.height, ade.upsampling, ade.start_size) == (151, 256, 256, "normal", (8, 8))
    assert (city.semantic_nc, city.width, city.height, city.upsampling, city.start_size) == (35, 512, 256, "more", (4, 8))
    assert (coco.semantic_nc, coco.width, coco.height, coco.upsampling) == (183, 256, 256, "normal")
    assert PRESETS["ade20k-outdoor"].semantic_nc == 151
    assert NetworkPreset.from_dict(city.to_dict()) == city


def test_bad_presets_are_input_errors():
    with pytest.raises(InputError, match="unknown preset"):
        get_preset("kitti")
    with pytest.raises(InputError, match="multiple of 2"):
        dataclasses.replace(PRESETS["ade20k"], width=250)
    with pytest.raises(InputError, match="3×3"):
        dataclasses.replace(PRESETS["ade20k"], width=64, height=64, segnet_channels=(8, 8))
    with pytest.raises(InputError, match="unknown fields"):
        NetworkPreset.from_dict({**PRESETS["toy"].to_dict(), "lr": 1})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_shapes_every_preset(name):
    p = tiny_preset(PRESETS[name])
    torch.manual_seed(0)
    G, D, S = build_generator(p), build_discriminator(p), build_segnet(p)
    label_map, guidance = random_inputs(p, batch=1)
    with torch.no_grad():
        fake = G(label_map, guidance)
        outs = D(label_map, fake)
        logits = S(fake)
    assert fake.shape == (1, 3, p.height, p.width)
    assert fake.abs().max() <= 1
    assert len(outs) == p.num_D and all(len(o) == p.n_layers_D + 1 for o in outs)
    assert all(o[-1].shape[1] == 1 for o in outs)
    assert logits.shape == (1, p.semantic_nc, p.height, p.width)


def test_spade_norm_generator_shapes():
    p = tiny_preset(PRESETS["toy"], norm="spade")
    G = build_generator(p)
    assert not any(isinstance(m, ResailNorm) for m in G.modules())
    assert any(isinstance(m, SpadeNorm) for m in G.modules())
    label_map, guidance = random_inputs(p, batch=1)
    assert G(label_map, guidance).shape == (1, 3, p.height, p.width)


# ---------------------------------------------------------------- RESAIL module


def small_norm(channels=4, semantic_nc=5, hidden=6, seed=0) -> ResailNorm:
    torch.manual_seed(seed)
    return ResailNorm(channels, semantic_nc, hidden)


def norm_inputs(seed=0, b=2, c=4, l=5, h=8, w=8, full=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    labels = torch.randint(0, l, (b, full, full), generator=g)
    guidance = torch.rand(b, 3, full, full, generator=g) * 2 - 1
    return x, one_hot(labels, l), guidance


def test_resail_gradients_reach_both_branches_and_mixing():
    norm = small_norm()
    x, m, g = norm_inputs()
    x.requires_grad_(True)
    norm(x, m, g).square().mean().backward()
    for name in ("coarse_shared", "coarse_gamma", "coarse_beta", "adain_conv", "adain_fc",
                 "fine_0", "fine_1", "fine_2", "fine_gamma", "fine_beta"):
        grad = getattr(norm, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert norm.mix_gamma.grad.abs() > 0 and norm.mix_beta.grad.abs() > 0
    assert x.grad.abs().sum() > 0


def test_resail_gradients_through_generator():
    p = tiny_preset(PRESETS["toy"])
    G = build_generator(p)
    label_map, guidance = random_inputs(p, batch=2)
    G(label_map, guidance).mean().backward()
    norm = G.up_3.norm_0
    for name in ("coarse_shared", "adain_conv", "adain_fc", "fine_0", "fine_gamma"):
        assert getattr(norm, name).weight.grad.abs().sum() > 0, name
    assert norm.mix_gamma.grad.abs() > 0 and norm.mix_beta.grad.abs() > 0


def test_resail_mixing_starts_at_half_and_selects_branches():
    norm = small_norm().eval()  # running stats: BN is then a fixed affine map
    x, m, g = norm_inputs()
    other_g = torch.rand_like(g) * 2 - 1
    with torch.no_grad():
        assert torch.sigmoid(norm.mix_gamma).item() == 0.5 == torch.sigmoid(norm.mix_beta).item()
        norm.mix_gamma.fill_(-40.0)
        norm.mix_beta.fill_(-40.0)  # α ≈ 0: coarse SPADE branch only, the guidance has no effect
        assert torch.allclose(norm(x, m, g), norm(x, m, other_g), atol=1e-6)
        norm.mix_gamma.fill_(40.0)
        norm.mix_beta.fill_(40.0)   # α ≈ 1: fine branch only
        assert not torch.allclose(norm(x, m, g), norm(x, m, other_g), atol=1e-4)


def test_resail_output_formula_and_resizing():
    norm = small_norm().eval()
    x, m, g = norm_inputs()
    h, w = x.shape[-2:]
    with torch.no_grad():
        out = norm(x, m, g)
        # guidance bilinear (align_corners=False), label map nearest: passing them pre-resized is identical
        g_small = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)
        m_small = F.interpolate(m, size=(h, w), mode="nearest")
        assert torch.allclose(out, norm(x, m_small, g_small), atol=1e-6)
        # recompute by the §6.1 formula
        a = F.relu(norm.coarse_shared(m_small))
        c1 = F.adaptive_avg_pool2d(norm.adain_conv(m_small), 1)
        c2 = norm.adain_fc(c1)
        k = norm.hidden
        f = F.relu(F.instance_norm(norm.fine_0(g_small)) * c1[:, :k] + c1[:, k:])
        f = F.relu(F.instance_norm(norm.fine_1(f)) * c2[:, :k] + c2[:, k:])
        f = norm.fine_2(f)
        gamma = 0.5 * norm.fine_gamma(f) + 0.5 * norm.coarse_gamma(a)
        beta = 0.5 * norm.fine_beta(f) + 0.5 * norm.coarse_beta(a)
        assert torch.allclose(out, norm.bn(x) * (1 + gamma) + beta, atol=1e-5)
    assert not norm.bn.affine and sum(p.numel() for p in norm.bn.parameters()) == 0


def test_adain_uses_image_level_vectors():
    z = torch.randn(2, 3, 5, 7)
    scale, bias = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]]), torch.tensor([[0.0, 1.0, -1.0], [2.0, 3.0, 0.0]])
    out = adain(z, scale, bias)
    assert torch.allclose(out.mean(dim=(2, 3)), bias, atol=1e-5)
    assert torch.allclose(out.var(dim=(2, 3), unbiased=False), scale**2, atol=1e-3)


# ---------------------------------------------------------------- spectral norm and init


def spectral_names(net: nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and parametrize.is_parametrized(m, "weight")}


def conv_names(net: nn.Module) -> set[str]:
    return {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def test_spectral_norm_placement_generator():
    G = build_generator(tiny_preset(PRESETS["toy"]))
    sn = spectral_names(G)
    blocks = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")
    expected = {f"{b}.conv_{i}" for b in blocks for i in (0, 1)}
    expected |= {f"{b}.conv_s" for b in blocks if getattr(G, b).learned_shortcut}
    assert {"up_0.conv_s", "up_3.conv_s"} <= expected and "head_0.conv_s" not in expected
    assert sn == expected
    assert "fc" in conv_names(G) and "conv_img" in conv_names(G)
    assert G.up_0.conv_s.bias is None
    assert not any(".norm_" in n for n in sn)  # no SN inside RESAIL modules


def test_spectral_norm_placement_discriminator():
    p = tiny_preset(PRESETS["toy"])
    D = build_discriminator(p)
    sn = spectral_names(D)
    expected = {f"scales.{s}.{path}.{layer}.0" for s in range(p.num_D)
                for path in ("image_path", "label_path") for layer in range(1, p.n_layers_D)}
    assert sn == expected
    assert conv_names(D) - sn == {f"scales.{s}.{x}" for s in range(p.num_D)
                                  for x in ("image_path.0.0", "label_path.0.0", "head")}


def test_spectral_norm_on_every_segnet_block_conv_not_the_head():
    S = build_segnet(tiny_preset(PRESETS["toy"]))
    assert spectral_names(S) == conv_names(S) - {"head"} and len(conv_names(S)) > 20


def _cuda_like_mv(monkeypatch):
    """Make torch.mv behave as under CUDA autocast, where it runs in bf16 (CPU autocast leaves it
    in fp32, so without this the CPU could not show the difference the fp32 σ makes). The result
    comes back as fp32 holding bf16 values, as CUDA's type promotion then hands it to vdot."""
    mv = torch.mv

    def lowered(mat, vec):
        if torch.is_autocast_enabled("cpu"):
            return mv(mat.bfloat16(), vec.bfloat16()).float()
        return mv(mat, vec)

    monkeypatch.setattr(torch, "mv", lowered)


def _sigma(conv: nn.Module) -> torch.Tensor:
    sn = conv.parametrizations.weight[0]
    w = conv.parametrizations.weight.original.flatten(1)
    return torch.vdot(sn._u, torch.mv(w, sn._v))


@pytest.mark.parametrize("training", [False, True])
def test_spectral_norm_sigma_is_fp32_under_bf16_autocast(monkeypatch, training):
    """σ and the power iteration run in fp32 inside autocast; the conv itself stays in bf16."""
    _cuda_like_mv(monkeypatch)
    torch.manual_seed(0)
    fp32 = ResBlock(64, 32, 3, norm_hidden=2).conv_0.train(training)
    mixed = ResBlock(64, 32, 3, norm_hidden=2).conv_0.train(training)
    mixed.load_state_dict(fp32.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered_sigma = _sigma(fp32)  # what torch's own parametrization computes under CUDA autocast
        w_mixed = mixed.weight  # in training mode: one power step, then W/σ
    assert lowered_sigma != _sigma(fp32)  # the emulation does lower σ: the check can fail
    w32 = fp32.weight
    assert w_mixed.dtype == torch.float32 and torch.equal(w_mixed, w32)
    assert torch.equal(mixed.parametrizations.weight[0]._u, fp32.parametrizations.weight[0]._u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixed(torch.rand(1, 64, 8, 8)).dtype == torch.bfloat16


def test_init_is_xavier_normal_gain_002_with_zero_bias():
    torch.manual_seed(0)
    G = build_generator(PRESETS["toy"])
    w = G.up_0.norm_0.coarse_gamma.weight  # C_out×C_in×3×3
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    assert w.std().item() == pytest.approx(0.02 * (2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    assert G.up_0.norm_0.coarse_gamma.bias.abs().max() == 0
    assert G.up_0.norm_0.mix_gamma.item() == 0.0
    w = G.head_0.conv_0.parametrizations.weight.original
    assert w.std().item() == pytest.approx(0.02 * (2 / (2 * w.shape[0] * 9)) ** 0.5, rel=0.05)


# ---------------------------------------------------------------- discriminator


def test_discriminator_feature_lists():
    D = MultiscaleDiscriminator(semantic_nc=5, ndf=4, n_layers=4, num_D=2)
    label_map, image = one_hot(torch.randint(0, 5, (2, 64, 64)), 5), torch.rand(2, 3, 64, 64)
    outs = D(label_map, image)
    # kernel 4, padding 2: stride 2 maps n → n//2 + 1, stride 1 maps n → n + 1
    assert [[tuple(t.shape) for t in o] for o in outs] == [
        [(2, 4, 33, 33), (2, 8, 17, 17), (2, 16, 9, 9), (2, 32, 10, 10), (2, 1, 11, 11)],
        [(2, 4, 17, 17), (2, 8, 9, 9), (2, 16, 5, 5), (2, 32, 6, 6), (2, 1, 7, 7)],
    ]


def test_discriminator_label_pathway_gates_image_features():
    torch.manual_seed(0)
    D = MultiscaleDiscriminator(semantic_nc=5, ndf=4, n_layers=3, num_D=1).eval()  # eval: no SN power step
    image = torch.rand(1, 3, 32, 32)
    a, b = one_hot(torch.zeros(1, 32, 32, dtype=torch.long), 5), one_hot(torch.full((1, 32, 32), 3), 5)
    out_a, out_b = D(a, image)[0], D(b, image)[0]
    for fa, fb in zip(out_a[:-1], out_b[:-1]):  # image features do not see the label map
        assert torch.equal(fa, fb)
    assert not torch.allclose(out_a[-1], out_b[-1])


def test_generator_rejects_indivisible_size():
    G = Generator(semantic_nc=3, ngf=1, norm_hidden=2)
    with pytest.raises(ValueError, match="divisible"):
        G(torch.zeros(1, 3, 100, 100), torch.zeros(1, 3, 100, 100))


def test_resblock_shortcut_rule():
    assert ResBlock(8, 8, 3, norm_hidden=2).learned_shortcut is False
    blk = ResBlock(8, 4, 3, norm_hidden=2)
    assert blk.learned_shortcut and blk.conv_0.out_channels == 4 and blk.norm_1.bn.num_features == 4


def test_segnet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        SegNet(3, (4, 4, 4))(torch.zeros(1, 3, 12, 12))


def test_few_upsampling_keeps_the_middle_blocks_at_the_start_grid():
    """'few' (toy64): four ups, head_0 and both middle blocks at the start grid, up_3 at full size."""
    p = PRESETS["toy64"]
    assert (p.width, p.height, p.n_up, p.start_size) == (64, 64, 4, (4, 4))
    G = build_generator(p)
    sizes = {}

    def record(name):
        def hook(module, args, out):
            sizes[name] = out.shape[-1]
        return hook

    for name in ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_3"):
        getattr(G, name).register_forward_hook(record(name))
    label_map, guidance = random_inputs(p, batch=1)
    with torch.no_grad():
        assert G(label_map, guidance).shape == (1, 3, 64, 64)
    assert sizes == {"head_0": 4, "G_middle_0": 4, "G_middle_1": 4, "up_0": 8, "up_3": 64}
