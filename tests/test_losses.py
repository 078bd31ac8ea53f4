"""synth.losses: hinge GAN, feature matching, VGG perceptual, class-balanced segmentation loss."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from resail.errors import InputError
from resail.synth.losses import (
    VGG19_FILE,
    VGG_LAYER_WEIGHTS,
    LossWeights,
    SegmentationLoss,
    VGGLoss,
    balanced_cross_entropy,
    class_balance_weights,
    feature_matching,
    hinge_d_fake,
    hinge_d_real,
    hinge_g,
    load_vgg19_features,
    vgg19_features_to_relu5_1,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def d_outs(*logit_values):
    """Fake D output: one scale per value list, a dummy feature then the logits."""
    return [[torch.zeros(1, 2, 2, 2), torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1)] for v in logit_values]


def test_hinge_terms_average_over_scales():
    outs = d_outs([2.0, 0.0], [-3.0, 0.5])
    # scale 1: relu(1-2)=0, relu(1-0)=1 → 0.5; scale 2: relu(4)=4, relu(.5)=.5 → 2.25
    assert hinge_d_real(outs).item() == pytest.approx((0.5 + 2.25) / 2)
    # relu(1+x): scale 1: 3, 1 → 2; scale 2: 0, 1.5 → 0.75
    assert hinge_d_fake(outs).item() == pytest.approx((2 + 0.75) / 2)
    # −mean: scale 1 −1, scale 2 1.25
    assert hinge_g(outs).item() == pytest.approx((-1 + 1.25) / 2)


def test_feature_matching_sums_layers_averages_scales_and_detaches_real():
    real = [[torch.zeros(1, 1, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)],
            [torch.zeros(1, 1, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]]
    fake = [[torch.full((1, 1, 2, 2), 1.0, requires_grad=True), torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 99.0)],
            [torch.full((1, 1, 2, 2), 3.0, requires_grad=True), torch.full((1, 1, 1, 1), 0.0), torch.full((1, 1, 1, 1), 99.0)]]
    loss = feature_matching(fake, real)  # logits (last entry) are left out
    assert loss.item() == pytest.approx(((1 + 2) + (3 + 0)) / 2)
    loss.backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None
    assert LossWeights() == LossWeights(gan=1.0, feat=10.0, vgg=10.0, seg=5.0)


# ---------------------------------------------------------------- segmentation loss


def test_balanced_cross_entropy_hand_computed():
    # one 2×3 image, 4 classes; class 3 never occurs; the last pixel is don't-care (255)
    target = torch.tensor([[[0, 0, 0], [1, 2, 255]]])
    logits = torch.zeros(1, 4, 2, 3)
    logits[0, 0, 0, 0] = 2.0   # pixel (0,0): confident and right
    logits[0, 1, 0, 1] = 1.0   # pixel (0,1): wrong class favoured
    logits[0, 2, 1, 0] = -1.0  # pixel (1,0), class 1
    logits[0, 2, 1, 1] = 3.0   # pixel (1,1), class 2: right
    logp = F.log_softmax(logits, dim=1)
    ce = [[-logp[0, 0, 0, 0], -logp[0, 0, 0, 1], -logp[0, 0, 0, 2]], [-logp[0, 1, 1, 0], -logp[0, 2, 1, 1]]]
    # N = 5 valid pixels, K = 3 classes present, n = (3, 1, 1): w = 5/(3·3), 5/3, 5/3
    w0, w1 = 5 / 9, 5 / 3
    expected = (w0 * sum(ce[0]) + w1 * ce[1][0] + w1 * ce[1][1]) / 5
    got = balanced_cross_entropy(logits, target, ignore_index=255)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)
    weights = class_balance_weights(target, 4, ignore_index=255)
    assert torch.allclose(weights, torch.tensor([w0, w1, w1, 0.0]))


def test_balanced_cross_entropy_without_ignore_matches_uniform_when_balanced():
    target = torch.tensor([[[0, 1], [2, 3]]])  # every class once: all weights 1 → plain CE
    logits = torch.randn(1, 4, 2, 2)
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert class_balance_weights(torch.full((1, 2, 2), 0), 3, ignore_index=0).sum() == 0  # all ignored: no weight


def test_segmentation_loss_uses_all_classes_and_trains_only_the_input():
    class Fixed(torch.nn.Module):  # logits favour class 100 everywhere
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 151, *x.shape[-2:]) + x.mean() * self.w
            logits[:, 100] += 20.0
            return logits

    seg = SegmentationLoss(Fixed(), ignore_index=0)
    seg.train()
    assert not seg.segnet.training and not seg.segnet.w.requires_grad
    fake = torch.zeros(1, 3, 4, 4, requires_grad=True)
    label_map = torch.zeros(1, 151, 4, 4)
    label_map[:, 100] = 1  # class 100 ≥ 35: the official code would have made it class 0
    right = seg(fake, label_map)
    label_map_wrong = torch.zeros(1, 151, 4, 4)
    label_map_wrong[:, 40] = 1
    assert right.item() < 0.1 < seg(fake, label_map_wrong).item()
    right.backward()
    assert fake.grad is not None and seg.segnet.w.grad is None


def test_void_is_a_class_only_under_the_official_recipe(tmp_path):
    """resail ignores void pixels (label 0) in L_seg; the official loss, which `--recipe official`
    restores, counts void as one more class: it changes the value and sends gradient there."""
    from resail.synth.config import resolve_config
    from resail.synth.segnet import SegnetTrainConfig, build_segnet, save_segnet
    from resail.synth.train import build_losses

    network = dict(ngf=4, norm_hidden=4, ndf=4, width=96, height=96, segnet_channels=(4,) * 5)
    segnet_path = tmp_path / "segnet.pt"
    cfg = {recipe: resolve_config("toy", n_train=4, network=network,
                                  overrides=dict(recipe=recipe, batch_size=2, segnet=str(segnet_path)))
           for recipe in ("resail", "official")}
    torch.manual_seed(0)
    save_segnet(segnet_path, build_segnet(cfg["resail"].net), None, 0, SegnetTrainConfig())
    seg = {recipe: build_losses(c, torch.device("cpu"))[1] for recipe, c in cfg.items()}
    assert seg["resail"].ignore_index == 0 and seg["official"].ignore_index is None

    label = torch.randint(1, cfg["resail"].net.semantic_nc, (1, 96, 96))
    label[:, :10] = 0  # ~10 % void pixels
    label_map = F.one_hot(label, cfg["resail"].net.semantic_nc).permute(0, 3, 1, 2).float()
    grads = {}
    for recipe, loss in seg.items():
        fake = (torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_()
        value = loss(fake, label_map)
        value.backward()
        grads[recipe] = (float(value.detach()), fake.grad)
    assert grads["resail"][0] != pytest.approx(grads["official"][0], rel=1e-4)
    assert not torch.allclose(grads["resail"][1], grads["official"][1])


# ---------------------------------------------------------------- VGG


def test_vgg_layout_matches_torchvision_keys():
    with torch.device("meta"):
        tv = torchvision.models.vgg19(weights=None).features[:30]
    ours = vgg19_features_to_relu5_1()
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in tv.state_dict().items()]
    assert [type(m) for m in ours] == [type(m) for m in tv]


def test_vgg_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(InputError) as e:
        load_vgg19_features(tmp_path / VGG19_FILE)
    msg = str(e.value)
    assert "--vgg-weights" in msg and "--no-vgg" in msg and "download.pytorch.org" in msg


def test_vgg_weights_load_from_torchvision_style_file(tmp_path):
    torch.manual_seed(0)
    src = vgg19_features_to_relu5_1()
    state = {f"features.{k}": v for k, v in src.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the classifier is ignored
    path = tmp_path / VGG19_FILE
    torch.save(state, path)
    loaded = load_vgg19_features(path)
    assert torch.equal(loaded[28].weight, src[28].weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_vgg19_features(tmp_path / "bad.pth")


def test_vgg_loss_layer_weights_and_gradients():
    torch.manual_seed(0)
    vgg = VGGLoss.random_init()
    vgg.train()
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    assert vgg(real, real).item() == 0
    loss = vgg(fake, real)
    feats_f, feats_r = vgg._features(fake), vgg._features(real)
    expected = sum(w * F.l1_loss(a, b) for w, a, b in zip(VGG_LAYER_WEIGHTS, feats_f, feats_r))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert [f.shape[1] for f in feats_f] == [64, 128, 256, 512, 512]
    loss.backward()
    assert fake.grad.abs().sum() > 0
    assert math.isclose(sum(VGG_LAYER_WEIGHTS), 1.46875)
