"""The SAM-Fed method pieces on hand-made tensors and a tiny toy segmentation task."""

import math

import numpy as np
import pytest
import torch

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.method.aggregation import ClientResult, aggregate, fedavg
from samfed.method.agreement import NEEDS_GLOBAL, agreement, agreement_stats
from samfed.method.arrays import SegArrays, generator, predict_proba
from samfed.method.augment import strong_augment, weak_augment
from samfed.method.local_update import client_update, make_optimizer, supervised_steps
from samfed.method.losses import kd_loss, seg_loss, sigmoid_rampup, weighted_bce, weighted_soft_dice
from samfed.method.precision import native_bf16
from samfed.models import create_student

torch.set_num_threads(1)  # the CI machine is shared; one thread is faster under contention


def m(*v):
    """Maps (1, 1, 1, n) from a list of probabilities."""
    return torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1)


# pixel:        agree  T-vs-L(L conf, G with L)  T-vs-L(G with T)  T-vs-L(L weak, G with L)
S = m(0.9, 0.6, 0.95, 0.55)
G = m(0.8, 0.05, 0.9, 0.3)
L = m(0.7, 0.02, 0.1, 0.35)


def test_agreement_teacher_and_naive():
    lab, w = agreement(S, G, L, "teacher")
    assert lab.flatten().tolist() == [1, 1, 1, 1] and w.flatten().tolist() == [1, 1, 1, 1]
    lab, w = agreement(S, None, L, "naive")
    # pixel 1: k_T .6 < k_L .98 -> local label 0, weight .38; pixel 2: k_T .95 > k_L .9 -> teacher, .05
    # pixel 3: k_T .55 < k_L .65 -> local label 0, weight .1
    assert lab.flatten().tolist() == [1, 0, 1, 0]
    assert w.flatten().tolist() == pytest.approx([1, 0.38, 0.05, 0.1], abs=1e-6)


def test_agreement_ignore_and_vote():
    lab, w = agreement(S, None, L, "ignore")
    assert lab.flatten().tolist() == [1, 1, 1, 1] and w.flatten().tolist() == [1, 0, 0, 0]
    lab, w = agreement(S, G, L, "vote")
    assert lab.flatten().tolist() == [1, 0, 1, 0]
    assert w.flatten().tolist() == pytest.approx([1, 1 / 3, 1 / 3, 1 / 3])


def test_agreement_anneal_is_teacher_only_at_ramp_zero():
    lab0, w0 = agreement(S, None, L, "anneal", ramp=0.0)
    assert lab0.flatten().tolist() == [1, 1, 1, 1] and w0.flatten().tolist() == [1, 1, 1, 1]
    lab1, w1 = agreement(S, None, L, "anneal", ramp=1.0)
    assert lab1.flatten().tolist() == [1, 0, 1, 0]
    assert w1[0, 0, 0, 1].item() == pytest.approx((0.98 - 0.6) / 0.98)


def test_agreement_weighted_needs_global_and_confidence():
    lab, w = agreement(S, G, L, "weighted", ramp=1.0, tau=0.8)
    # pixel 1: local and global agree (min conf .95 >= tau) and beat the teacher -> label 0
    # pixel 2: the global model sides with the teacher -> teacher label, weight 1
    # pixel 3: local and global agree but min conf .65 < tau -> teacher label, weight 1
    assert lab.flatten().tolist() == [1, 0, 1, 1]
    assert w.flatten().tolist() == pytest.approx([1, (0.95 - 0.6) / 0.95, 1, 1], abs=1e-6)
    lab0, w0 = agreement(S, G, L, "weighted", ramp=0.0)
    assert torch.equal(lab0, (S > 0.5).float()) and torch.equal(w0, torch.ones_like(S))
    with pytest.raises(ValueError):
        agreement(S, None, L, "weighted")
    with pytest.raises(SamfedError, match="unknown agreement variant 'bogus'"):
        agreement(S, G, L, "bogus")
    lab_o, w_o = agreement(S, G, L, "override", ramp=1.0, tau=0.8)  # weighted's labels, full weight
    assert torch.equal(lab_o, lab) and torch.equal(w_o, torch.ones_like(S))


def test_agreement_reliable_weights_each_image_by_teacher_global_dice():
    s, g, loc = torch.cat([S, S]), torch.cat([G, S]), torch.cat([L, L])  # image 1: global = teacher
    lab, w = agreement(s, g, loc, "reliable", ramp=1.0, tau=0.8)
    lab_o, _ = agreement(s, g, loc, "override", ramp=1.0, tau=0.8)
    assert torch.equal(lab, lab_o)  # override's labels
    # image 0: teacher mask 4 pixels, global mask 2 of them -> Dice 2 * 2 / 6
    assert w[0].flatten().tolist() == pytest.approx([2 / 3] * 4) and w[1].flatten().tolist() == [1] * 4
    _, w_half = agreement(s, g, loc, "reliable", ramp=0.5, tau=0.8)
    assert w_half[0].flatten().tolist() == pytest.approx([1 - 0.5 / 3] * 4)
    empty = torch.zeros_like(S)
    assert agreement(empty, empty, L, "reliable")[1].flatten().tolist() == [1] * 4  # both empty
    with pytest.raises(ValueError):
        agreement(S, None, L, "reliable")


def test_agreement_stats_counts():
    lab, w = agreement(S, G, L, "weighted", ramp=1.0)
    gt = m(1, 0, 1, 0)
    st = agreement_stats(S, L, lab, w, gt)
    assert st["pixels"] == 4 and st["agree"] == 1 and st["override"] == 1
    assert st["teacher_correct"] == 2 and st["pl_correct"] == 3
    # one image; teacher mask 1111 vs gt 1010: 2*2/(4+2); pseudo-label 1011 (pixel 1 overridden): 2*2/(3+2)
    assert st["images"] == 1
    assert st["teacher_dice"].item() == pytest.approx(4 / 6)
    assert st["pl_dice"].item() == pytest.approx(4 / 5)
    empty = torch.zeros(2, 1, 2, 2)  # both empty -> Dice 1 per image (samfed.metrics convention)
    st0 = agreement_stats(empty, empty, empty, torch.ones_like(empty), empty)
    assert st0["images"] == 2 and st0["teacher_dice"].item() == pytest.approx(2.0)


def test_losses_on_known_inputs():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert weighted_bce(logits, target).item() == pytest.approx(math.log(2))
    big = torch.where(target > 0, 20.0, -20.0)
    assert weighted_bce(big, target).item() < 1e-6
    assert weighted_soft_dice(big, target).item() == pytest.approx(0.0, abs=1e-6)
    # wrong everywhere: sum p = sum y = 2, no overlap -> Dice = eps / (4 + eps) with eps = 1
    assert weighted_soft_dice(-big, target).item() == pytest.approx(1 - 1 / 5, abs=1e-6)
    # a zero weight removes a pixel: wrong only where w = 0 -> no loss
    half_wrong = big.clone()
    half_wrong[0, 0, 0, 0] = -20.0
    w = torch.ones_like(target)
    w[0, 0, 0, 0] = 0
    assert weighted_bce(half_wrong, target, w).item() < 1e-6
    assert seg_loss(half_wrong, target, w).item() < 1e-6
    assert weighted_bce(logits, target, torch.zeros_like(target)).item() == 0.0


def test_kd_loss_two_class_temperature():
    z = torch.randn(2, 1, 4, 4)
    assert kd_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    # teacher logit 0 (p=.5), student logit 2: at T=2 q = sigmoid(1); KL = .5 log(.5/q) + .5 log(.5/(1-q))
    q = 1 / (1 + math.exp(-1))
    expected = 4 * (0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q)))
    got = kd_loss(torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 4) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(2, 4) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(9, 4) == 1.0 and sigmoid_rampup(0, 0) == 1.0


def test_fedavg_weights_by_samples_and_keeps_int_buffers():
    a = {"w": torch.tensor([0.0, 2.0]), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.tensor([4.0, 6.0]), "bn.num_batches_tracked": torch.tensor(7)}
    out = fedavg([a, b], [1, 3])
    assert out["w"].tolist() == pytest.approx([3.0, 5.0])
    assert out["bn.num_batches_tracked"].item() == 7 and out["bn.num_batches_tracked"].dtype == torch.int64
    # real BatchNorm models: running stats averaged too, result loads strictly
    m1, m2 = create_student("unet-s"), create_student("unet-s")
    m1(torch.randn(2, 3, 32, 32))
    avg = fedavg([m1.state_dict(), m2.state_dict()], [1, 1])
    key = next(k for k in avg if k.endswith("running_mean"))
    assert torch.allclose(avg[key], (m1.state_dict()[key] + m2.state_dict()[key]) / 2)
    create_student("unet-s").load_state_dict(avg, strict=True)


def test_weak_augment_moves_maps_with_images():
    x = torch.rand(3, 3, 32, 32)
    probs = x[:, :1].clone()
    mask = (x[:, 1:2] > 0.5).float()
    xa, (pa, ma) = weak_augment(x, [probs, mask], generator(1))
    assert torch.allclose(xa[:, :1], pa, atol=1e-6)  # same geometry
    assert set(ma.unique().tolist()) <= {0.0, 1.0}
    assert not torch.allclose(xa, x)
    xb, _ = weak_augment(x, [None], generator(1))
    assert torch.equal(xa, xb)  # generator-driven


def test_strong_augment_keeps_geometry_and_is_seeded():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 4:8, 4:8] = 2.0
    y = strong_augment(x, generator(0))
    assert torch.equal(y, strong_augment(x, generator(0)))
    inside, outside = y[:, :, 5, 5], y[:, :, 12, 12]
    assert torch.allclose(y[:, :, 4:8, 4:8], inside[..., None, None].expand(-1, -1, 4, 4))
    assert not torch.allclose(inside, outside)


# ---- toy segmentation task: bright discs on a noisy background, 32 px ----------------------------


def toy_set(n: int, seed: int, size: int = 32) -> SegArrays:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(4, 9)
        mk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img = rng.normal(90, 25, (size, size, 3))
        img[mk] += np.array([100, 40, 20])
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mk)
    return SegArrays(np.stack(imgs), np.stack(masks), [f"t{seed}_{i}" for i in range(n)])


def toy_cfg(**kw) -> RunConfig:
    base = dict(image_size=32, batch_size=4, lr=3e-3, local_epochs=1, rounds=2, rampup_rounds=0.0)
    base.update(kw)
    return RunConfig(**base)


def mean_dice(model, data: SegArrays, cfg: RunConfig) -> float:
    from samfed.metrics import dice_batch
    from samfed.preprocess import Preprocessing

    p = predict_proba(model, data, Preprocessing(size=cfg.image_size))
    return float(dice_batch(p > 0.5, data.masks).mean())


def test_client_update_deterministic_and_never_reads_client_masks():
    torch.manual_seed(0)
    cfg = toy_cfg(method="samfed")
    labeled, client = toy_set(6, 1), toy_set(8, 2)
    maps = client.masks.astype(np.float32) * 0.9 + 0.05
    glob = create_student("unet-s")
    runs = []
    for masks in (client.masks, None):
        local = create_student("unet-s")
        data = SegArrays(client.images, masks, client.ids)
        runs.append(client_update(glob, local, data, maps, labeled, cfg, round=2, seed=11))
    (s1, n1, met1), (s2, n2, met2) = runs
    assert n1 == n2 == 8
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert "pl_acc" in met1 and "pl_acc" not in met2 and 0 <= met1["agreement_rate"] <= 1
    assert met1["pl_acc"] == pytest.approx(1.0)  # the maps are the ground truth here
    local = create_student("unet-s")
    s3, _, _ = client_update(
        glob, local, SegArrays(client.images, None, client.ids), maps, labeled, cfg, 2, seed=12
    )
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_bf16_client_update_is_deterministic_float32_and_contiguous():
    cfg = toy_cfg(method="samfed", precision="bf16")
    labeled, client = toy_set(4, 1), toy_set(6, 2)
    maps = client.masks.astype(np.float32) * 0.9 + 0.05
    glob = create_student("unet-s")
    runs = []
    for _ in range(2):
        local = create_student("unet-s")
        state, _, met = client_update(glob, local, client, maps, labeled, cfg, round=1, seed=3)
        assert math.isfinite(met["loss"])
        assert all(p.is_contiguous() for p in local.parameters())  # layout restored after training
        runs.append(state)
    assert all(v.dtype != torch.bfloat16 and v.is_contiguous() for v in runs[0].values())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    fp32 = client_update(
        glob, create_student("unet-s"), client, maps, labeled, toy_cfg(method="samfed"), 1, 3
    )[0]
    assert not all(torch.equal(runs[0][k], fp32[k]) for k in fp32)  # bf16 really ran


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_native_bf16_follows_the_cpu_flags_and_any_gpu_has_it(monkeypatch, amx, avx512_bf16, native):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert native_bf16(torch.device("cpu")) is native
    assert native_bf16(torch.device("cuda")) is True


@pytest.mark.parametrize("method", ["samfed-no-sam", "fixmatch", "sam-only"])
def test_client_update_other_methods_run(method):
    cfg = toy_cfg(method=method)
    labeled, client = toy_set(4, 3), toy_set(4, 4)
    maps = None if method in ("samfed-no-sam", "fixmatch") else client.masks.astype(np.float32)
    glob, local = create_student("unet-s"), create_student("unet-s")
    state, n, met = client_update(glob, local, client, maps, labeled, cfg, 1, seed=0)
    assert n == 4 and math.isfinite(met["loss"])
    assert (met["loss_kd"] > 0) == (method == "samfed-no-sam")


@pytest.mark.parametrize("variant", NEEDS_GLOBAL)
def test_no_kd_still_gives_the_agreement_its_global_map(variant):
    cfg = toy_cfg(method="samfed-no-kd", agreement=variant)
    labeled, client = toy_set(4, 3), toy_set(4, 4)
    maps = client.masks.astype(np.float32)
    _, _, met = client_update(
        create_student("unet-s"), create_student("unet-s"), client, maps, labeled, cfg, 2, 0
    )
    assert math.isfinite(met["loss"]) and met["loss_kd"] == 0


def test_heterogeneous_distillation_improves_global_model():
    cfg = toy_cfg(students=["mobile-unet", "resunet-lite"], global_student="unet-s", distill_epochs=6)
    labeled, val = toy_set(16, 5), toy_set(16, 6)
    clients = []
    for k, arch in enumerate(cfg.students):
        torch.manual_seed(k)
        model = create_student(arch)
        supervised_steps(model, toy_set(32, 10 + k), cfg, steps=60, seed=k)
        clients.append(ClientResult(state={}, num_samples=32, model=model))
    torch.manual_seed(9)
    glob = create_student("unet-s")
    before = mean_dice(glob, val, cfg)
    state, met = aggregate("distill", glob, clients, labeled, cfg, round=1, seed=0)
    glob.load_state_dict(state)
    after = mean_dice(glob, val, cfg)
    ensemble = np.mean([mean_dice(c.model, val, cfg) for c in clients])
    assert ensemble > 0.5
    assert after > before + 0.1, (before, after, ensemble)
    assert met["distill_kd"] >= 0


def test_device_batches_equal_host_batches():
    """The accelerator path (uint8 set uploaded once, normalised by torch) gives the host batches."""
    from samfed.method.arrays import SegArrays
    from samfed.preprocess import Preprocessing

    data = toy_set(5, 7)
    prep = Preprocessing(size=data.images.shape[1])
    idx = np.array([3, 0, 3])
    x, y = data.batch(idx, prep)
    xd, yd = data._device_batch(idx, prep, torch.device("cpu"))
    assert torch.allclose(x, xd, atol=1e-6) and torch.equal(y, yd) and xd.is_contiguous()
    assert SegArrays(data.images, None, data.ids)._device_batch(idx, prep, torch.device("cpu"))[1] is None


def test_kd_weight_and_gate():
    from samfed.method.local_update import _kd_gate

    z_s, z_g = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.allclose(kd_loss(z_s, z_g, 2.0, torch.ones_like(z_s)), kd_loss(z_s, z_g, 2.0))
    assert kd_loss(z_s, z_g, 2.0, torch.zeros_like(z_s)).item() == 0.0
    s = torch.tensor([0.9, 0.9, 0.1, 0.1]).view(1, 1, 2, 2)
    g = torch.tensor([3.0, -3.0, -3.0, 3.0]).view(1, 1, 2, 2)
    assert _kd_gate(toy_cfg(kd_gate="none"), s, g) is None
    assert _kd_gate(toy_cfg(kd_gate="teacher"), s, g).flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    assert _kd_gate(toy_cfg(kd_gate="teacher"), None, g) is None  # no teacher (samfed-no-sam): plain KD


def test_bn_recalibration_re_estimates_statistics_on_clean_images_only():
    from samfed.config import RunConfig
    from samfed.method.arrays import SegArrays
    from samfed.method.server import recalibrate_bn
    from samfed.preprocess import Preprocessing, normalize

    g = np.random.default_rng(0)
    images = g.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labeled = SegArrays(images, np.zeros((8, 32, 32), bool), [str(i) for i in range(8)])
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 1, 1))
    model[0].running_mean.fill_(5.0)  # stale statistics, as after augmented local training
    weights = {k: v.clone() for k, v in model.named_parameters()}
    cfg = RunConfig(image_size=32, batch_size=4)
    assert recalibrate_bn(model.eval(), labeled, cfg) == 1
    x = normalize(images, Preprocessing(size=32))  # (N, 3, S, S), what D_p's batches hold
    assert torch.allclose(model[0].running_mean, torch.from_numpy(x.mean(axis=(0, 2, 3))), atol=1e-5)
    assert model[0].momentum == 0.1 and not model.training
    assert all(torch.equal(dict(model.named_parameters())[k], v) for k, v in weights.items())
    assert recalibrate_bn(torch.nn.Sequential(torch.nn.GroupNorm(1, 3)), labeled, cfg) == 0


def test_optimizer_warms_the_learning_rate_up_linearly_unless_from_scratch():
    model = torch.nn.Linear(3, 1)
    cfg = RunConfig(lr=1e-3, lr_warmup=4)
    opt, sched = make_optimizer(model, cfg)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    for opt, _ in (make_optimizer(model, cfg, warmup=False), make_optimizer(model, RunConfig(lr_warmup=0))):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_warmup_shrinks_the_first_steps_of_an_update_from_trained_weights():
    """A fresh Adam's first step moves every weight by about lr, however small its gradient."""
    torch.manual_seed(0)
    start = create_student("unet-s").state_dict()
    moved = {}
    for warmup in (0, 10):
        model = create_student("unet-s")
        model.load_state_dict(start)
        opt, sched = make_optimizer(model, RunConfig(lr=1e-3, lr_warmup=warmup))
        model(torch.randn(2, 3, 64, 64)).mean().backward()
        opt.step()
        sched.step()
        w, w0 = model.state_dict()["head.weight"], start["head.weight"]
        moved[warmup] = float((w - w0).abs().mean())
    assert moved[0] == pytest.approx(1e-3, rel=0.05)
    assert moved[10] == pytest.approx(1e-4, rel=0.05)
