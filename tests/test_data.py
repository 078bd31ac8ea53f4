"""Training data order, label helpers and config resolution (no work dir needed)."""

import numpy as np
import pytest
import torch

from resail.errors import InputError
from resail.synth.config import TrainConfig, resolve_config
from resail.synth.data import StepBatchSampler, instance_edges, one_hot, resize_nearest


def test_rank_batches_union_to_the_global_batch_and_resume_skips_exactly():
    single = list(StepBatchSampler(10, 4, seed=3, total_steps=7))
    ranks = [list(StepBatchSampler(10, 4, seed=3, total_steps=7, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 7 and all(len(b) == 4 for b in single)
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch
        assert batch[0][0] == step // 2  # 2 steps per epoch (last partial batch dropped)
    assert list(StepBatchSampler(10, 4, seed=3, total_steps=7, start_step=5)) == single[5:]
    for epoch in range(3):  # every epoch is a permutation: no image twice within it
        idx = [i for b in single[2 * epoch:2 * epoch + 2] for _, i in b]
        assert len(set(idx)) == len(idx)
    with pytest.raises(InputError, match="divisible"):
        StepBatchSampler(10, 3, seed=0, total_steps=1, world_size=2)


def test_one_hot_puts_native_ids_on_their_channel():
    label = torch.tensor([[[0, 5], [150, 5]]])
    m = one_hot(label, 151)
    assert m.shape == (1, 151, 2, 2) and torch.equal(m.sum(1), torch.ones(1, 2, 2))
    assert m[0, 150, 1, 0] == 1 and m[0, 5, 0, 1] == 1 and m[0, 0, 0, 0] == 1


def test_nearest_resize_and_instance_edges():
    a = np.arange(4, dtype=np.int32).reshape(2, 2) + 1000
    assert resize_nearest(a, 4, 4).tolist() == [[1000, 1000, 1001, 1001]] * 2 + [[1002, 1002, 1003, 1003]] * 2
    inst = np.zeros((4, 4), np.int32)
    inst[1:3, 1:3] = 1
    e = instance_edges(inst, (4, 4))
    assert e[0, 0] == 0 and e[1, 1] == 1 and e[0, 1] == 1
    assert instance_edges(None, (3, 3)).sum() == 0


def test_config_precedence_preset_toml_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('batch_size = 2\nlr_G = 3e-4\n[network]\nngf = 8\n')
    cfg = resolve_config("toy", n_train=20, toml=toml, overrides={"lr_G": 5e-5, "norm": "spade", "epochs": 4})
    assert cfg.batch_size == 2 and cfg.lr_G == 5e-5 and cfg.net.ngf == 8 and cfg.net.norm == "spade"
    assert (cfg.niter, cfg.niter_decay) == (2, 2) and cfg.total_steps == 40 and cfg.decay_start == 20
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    ade = resolve_config("ade20k", n_train=80)
    assert (ade.batch_size, ade.load_size, ade.niter, ade.niter_decay, ade.vgg, ade.seg_loss) == (8, (286, 286), 100, 100, True, False)
    city = resolve_config("cityscapes", n_train=30)
    assert city.preprocess == "fixed" and city.load_size == (512, 256) and not city.seg_loss
    assert any("no --segnet" in n for n in city.notes)
    assert resolve_config("cityscapes", n_train=30, overrides={"segnet": "s.pt"}).seg_loss
    toml.write_text("batchsize = 2\n")
    with pytest.raises(InputError, match="batchsize"):
        resolve_config("toy", n_train=20, toml=toml)
    with pytest.raises(InputError, match="batch size"):
        resolve_config("toy", n_train=3)
    with pytest.raises(InputError, match="choose one"):
        resolve_config("toy", n_train=20, overrides={"steps": 5, "epochs": 2})
