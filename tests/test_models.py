"""Student zoo: registry, forward shapes for both norms, size budget, ONNX export parity, CLI."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from samfed.errors import SamfedError
from samfed.models import STUDENTS, count_parameters, create_student, gflops, list_students, register_student

NAMES = ["mobile-unet", "resunet-lite", "unet-s"]
NORMS = ["batch", "group"]


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give norm layers non-trivial statistics/affine params so parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = 0.1 * torch.randn(m.running_mean.shape, generator=g)
            m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)
    return model


def test_registry_lists_the_families():
    assert list_students() == sorted([*NAMES, "effl0-unet", "mnv2-unet"])  # + the pretrained-encoder ones
    assert all(STUDENTS[n].description for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_forward_shape_and_backward(name, norm):
    torch.manual_seed(0)
    model = create_student(name, norm=norm)
    kinds = {type(m) for m in model.modules()}
    assert (nn.BatchNorm2d in kinds) == (norm == "batch")
    assert (nn.GroupNorm in kinds) == (norm == "group")
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert y.shape == (2, 1, 64, 64)
    assert torch.isfinite(y).all()
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_non_square_96_and_bad_size(name):
    model = create_student(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 1, 96, 64)
        with pytest.raises(ValueError, match="divisible by 16"):
            model(torch.randn(1, 3, 72, 72))


@pytest.mark.parametrize("name", NAMES)
def test_size_budget(name):
    model = create_student(name)
    n = count_parameters(model)
    assert 0.5e6 < n <= 5e6
    assert count_parameters(create_student(name, norm="group")) == n
    g256, g128 = gflops(model, 256), gflops(model, 128)
    assert 0.1 < g256 < 20
    assert g256 == pytest.approx(4 * g128, rel=0.05)  # convs scale with pixel count
    assert model.training  # gflops restores the mode


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_onnx_export_dynamic_batch_matches_torch(name, norm):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    model = _randomize_norms(create_student(name, norm=norm)).eval()
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
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        assert out.shape == (batch, 1, 64, 64)
        assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name", NAMES)
def test_group_norm_supports_per_sample_gradients(name):
    """Differential privacy needs per-sample gradients: torch.func.vmap(grad) must work with GroupNorm."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = create_student(name, norm="group")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x, y):
        out = functional_call(model, (p, buffers), (x[None],))
        return nn.functional.binary_cross_entropy_with_logits(out, y[None])

    x, y = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    single = grad(loss)(params, x[1], y[1])
    for k, g in single.items():
        assert per_sample[k].shape == (2, *g.shape)
        torch.testing.assert_close(per_sample[k][1], g, rtol=1e-4, atol=1e-6)


def test_unknown_name_and_norm_are_user_errors():
    with pytest.raises(SamfedError, match="unknown student"):
        create_student("resnet-9000")
    with pytest.raises(SamfedError, match="unknown norm"):
        create_student("unet-s", norm="layer")


def test_register_student_decorator():
    @register_student("tiny-test", "a 1x1 conv")
    def _tiny(norm: str = "batch") -> nn.Module:
        return nn.Conv2d(3, 1, 1)

    try:
        assert "tiny-test" in list_students()
        assert isinstance(create_student("tiny-test"), nn.Conv2d)
        with pytest.raises(ValueError, match="already registered"):
            register_student("tiny-test", "again")(_tiny)
    finally:
        STUDENTS.pop("tiny-test", None)


def test_models_cli_table_and_bad_size(capsys):
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(cli.app, ["models", "--size", "64"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.output
    assert "GFLOPs @64" in result.output
    with pytest.raises(SystemExit) as exc:
        cli.main(["models", "--size", "100"])
    assert exc.value.code == 1
    assert "multiple of 16" in capsys.readouterr().err
