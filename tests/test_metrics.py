"""synth/metrics.py: Fréchet distance and KID against independent computations, and the one
segmentation convention against a brute-force count, a hand count, and as both commands use it
(`resail segnet train` and `resail eval` give one mIoU for one network on the same images)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from resail.errors import InputError
from resail.pipeline.labels.spaces import LabelChannels
from resail.synth.eval import SegnetScorer
from resail.synth.metrics import (
    argmax_over,
    confusion_matrix,
    feature_distances,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    segmentation_scores,
)
from resail.synth.segnet import SegNet, evaluate_segnet

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- FID / KID


def _independent_fid(a: np.ndarray, b: np.ndarray) -> float:
    """tr √(Σ₁Σ₂) = Σ √λ(√Σ₁ Σ₂ √Σ₁), a symmetric PSD eigenproblem: no sqrtm of a non-symmetric product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = scipy.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # pytorch-fid's call
def test_frechet_distance_matches_independent_scipy_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    got = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert got == pytest.approx(_independent_fid(a, b), rel=1e-8)
    assert frechet_distance(*feature_stats(a), *feature_stats(a)) == pytest.approx(0.0, abs=1e-8)
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    assert got == pytest.approx(fid_score.calculate_frechet_distance(*feature_stats(a), *feature_stats(b)), rel=1e-10)
    # fewer samples than dimensions: singular covariances still give a finite, non-negative number
    small = frechet_distance(*feature_stats(a[:5]), *feature_stats(b[:6]))
    assert np.isfinite(small) and small > 0
    with pytest.raises(InputError):
        feature_stats(a[:1])


def test_kid_is_near_zero_for_one_distribution_and_positive_for_another():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    same = kernel_inception_distance(a, b, n_subsets=20, subset_size=100)
    other = kernel_inception_distance(a, b + 1.0, n_subsets=20, subset_size=100)
    assert abs(same["mean"]) < 5 * same["std"] + 1e-3 and other["mean"] > 10 * abs(same["mean"])
    assert other["subset_size"] == 100


# ---------------------------------------------------------------- segmentation scores


def test_feature_space_fid_and_kid_helper():
    """`feature_distances` is FID + KID on any features (the toy ablation uses SegNet.features):
    ~0 for one set against itself, growing with a shift of the mean."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(size=(200, 16))  # another draw of the same distribution
    same, near, far = feature_distances(a, a), feature_distances(a, b), feature_distances(a, b + 0.5)
    assert abs(same["fid"]) < 1e-6 and 0 < near["fid"] < far["fid"]
    assert far["fid"] == pytest.approx(16 * 0.25 + near["fid"], rel=0.2)   # + |Δμ|²
    # KID's unbiased estimate assumes independent sets: a set against itself is only ~0 (slightly < 0)
    assert abs(same["kid"]["mean"]) < 0.1 * far["kid"]["mean"] and near["kid"]["mean"] < far["kid"]["mean"]
    assert feature_distances(a, b, kid=False)["kid"] is None


def test_segmentation_scores_match_a_hand_counted_confusion_matrix():
    # classes 1, 2, 3 evaluated; 0 = void; 4 an unused channel of the segmenter
    label = torch.tensor([[1, 1, 1, 2], [2, 2, 0, 0], [3, 3, 1, 0]])
    pred = torch.tensor([[1, 1, 2, 2], [2, 1, 1, 3], [3, 2, 1, 0]])
    conf = confusion_matrix(pred, label, 5).numpy()
    expected = np.zeros((5, 5), np.int64)
    for gt, p, n in [(0, 0, 1), (0, 1, 1), (0, 3, 1), (1, 1, 3), (1, 2, 1), (2, 2, 2), (2, 1, 1), (3, 3, 1), (3, 2, 1)]:
        expected[gt, p] = n
    np.testing.assert_array_equal(conf, expected)
    s = segmentation_scores(conf, [1, 2, 3])
    # IoU: c1 tp 3 / (4 + 4 − 3); c2 tp 2 / (3 + 4 − 2); c3 tp 1 / (2 + 1 − 1)
    iou = {1: 3 / 5, 2: 2 / 5, 3: 1 / 2}
    assert s["iou"] == pytest.approx(iou)
    assert s["miou"] == pytest.approx(np.mean(list(iou.values())))
    assert s["pixel_acc"] == pytest.approx(6 / 9)
    assert s["mean_acc"] == pytest.approx(np.mean([3 / 4, 2 / 3, 1 / 2]))
    assert s["n_pixels"] == 9 and s["n_classes"] == 3
    # a class absent from label and prediction stays out of the mean; one only predicted counts 0
    assert segmentation_scores(conf, [1, 2, 3, 4])["miou"] == pytest.approx(s["miou"])
    conf2 = conf.copy()
    conf2[1, 4] += 1
    assert segmentation_scores(conf2, [1, 2, 3, 4])["iou"][4] == 0.0


def _brute_force_scores(preds, labels, class_ids) -> dict:
    """The README's definitions, pixel by pixel over the whole split: a pixel counts when its
    label is an evaluated class; IoU = TP/(TP+FP+FN) over the counted pixels, mIoU over the
    classes with a non-empty union, pixel accuracy over the counted pixels."""
    tp, fp, fn = dict.fromkeys(class_ids, 0), dict.fromkeys(class_ids, 0), dict.fromkeys(class_ids, 0)
    counted = correct = 0
    for pred, label in zip(preds, labels):
        for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
            if t not in tp:
                continue   # void, a class not evaluated, or no class at all (−1): ignored
            counted += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fn[t] += 1
                if p in fp:
                    fp[p] += 1
    iou = {c: tp[c] / (tp[c] + fp[c] + fn[c]) for c in class_ids if tp[c] + fp[c] + fn[c]}
    acc = [tp[c] / (tp[c] + fn[c]) for c in class_ids if tp[c] + fn[c]]
    return {"iou": iou, "miou": sum(iou.values()) / len(iou) if iou else math.nan,
            "pixel_acc": correct / counted if counted else math.nan,
            "mean_acc": sum(acc) / len(acc) if acc else math.nan, "n_pixels": counted, "n_classes": len(iou)}


@pytest.mark.parametrize("seed", range(6))
def test_scores_equal_a_brute_force_count_over_a_split(seed):
    """Random batches with void, classes outside the evaluated list, labels without a class (−1),
    predictions of unevaluated classes and classes absent from both sides."""
    rng = np.random.default_rng(seed)
    K = int(rng.integers(3, 9))
    class_ids = sorted(rng.choice(np.arange(1, K), size=int(rng.integers(1, K)), replace=False).tolist())
    preds, labels = [], []
    conf = torch.zeros(K, K, dtype=torch.long)
    for _ in range(int(rng.integers(1, 4))):
        shape = tuple(int(v) for v in rng.integers(1, 9, 3))
        label = rng.integers(-1, K, shape)
        pred = np.where(rng.random(shape) < 0.4, label.clip(0), rng.integers(0, K, shape))
        preds.append(pred)
        labels.append(label)
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), K)
    got = segmentation_scores(conf, class_ids)
    want = _brute_force_scores(preds, labels, class_ids)
    assert got["iou"] == pytest.approx(want["iou"]) and got["n_pixels"] == want["n_pixels"]
    assert got["n_classes"] == want["n_classes"]
    for key in ("miou", "pixel_acc", "mean_acc"):
        assert got[key] == pytest.approx(want[key], nan_ok=True), key
    # the same matrix from numpy arrays in one call
    flat = [np.concatenate([a.ravel() for a in x]) for x in (preds, labels)]
    assert torch.equal(confusion_matrix(*flat, K), conf)


def test_empty_and_misused_inputs():
    conf = confusion_matrix(torch.tensor([1, 2]), torch.tensor([0, -1]), 3)   # void and no class only
    s = segmentation_scores(conf, [1, 2])
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_acc"]) and s["n_pixels"] == 0 and s["iou"] == {}
    with pytest.raises(ValueError, match="predictions outside"):
        confusion_matrix(torch.tensor([3]), torch.tensor([1]), 3)


def test_argmax_over_the_evaluated_channels_only():
    logits = torch.tensor([[5.0, 1.0, 2.0, 2.0], [0.0, 0.0, 3.0, 9.0]])[:, :, None, None].expand(2, 4, 2, 3)
    pred = argmax_over(logits, torch.tensor([1, 2]))
    assert pred[0].unique().tolist() == [2] and pred[1].unique().tolist() == [2]
    ties = argmax_over(torch.zeros(1, 4, 1, 1), torch.tensor([1, 3]))   # a tie goes to the lowest channel
    assert ties.item() == 1


def test_segnet_train_and_eval_give_one_miou():
    """The val score `resail segnet train` prints (`evaluate_segnet`) and the real-image score of
    `resail eval` (its `SegnetScorer`) are the same numbers for one network on the same pixels."""
    torch.manual_seed(0)
    table = (0, 4, 9, 12, 20)                       # native ids of the network's five channels
    net = SegNet(len(table), (4, 4), table).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, len(table), (3, 16, 16)))   # channel ids, 0 = void
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    dataset_classes = [4, 9, 20]                    # native 12 has a channel but is not a class of the data
    trained = evaluate_segnet(net, [(x[:2], labels[:2]), (x[2:], labels[2:])], dataset_classes)
    scorer = SegnetScorer(net, LabelChannels(table, len(table)), dataset_classes, "cpu")
    scorer.add("real", images[:1], labels[:1])
    scorer.add("real", images[1:], labels[1:])
    evaluated = scorer.scores()["real"]
    assert trained == evaluated and set(trained["iou"]) <= {4, 9, 20} and trained["n_pixels"] > 0
    with pytest.raises(InputError, match="none of the evaluated classes"):
        evaluate_segnet(net, [], [1, 2])
