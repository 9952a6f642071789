"""Renamed options keep their old names for one release (with one deprecation line); option
vocabularies come from samfed's registries."""

from __future__ import annotations

import click
import pytest
from run_helpers import run_cli

from samfed.commands.choices import names_of, setting_choices
from samfed.commands.renamed import Renamed
from samfed.errors import SamfedError
from samfed.federation import site_config as sc

DEPRECATED = "is deprecated; use"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`samfed ARGS` in this process: (exit code, stdout, stderr with whitespace collapsed)."""
    code, out, err = run_cli(capsys, *args)
    return code, out, " ".join(err.split())


def test_rewrite_old_flags_and_values(capsys):
    r = Renamed(flags={"--batch": "--batch-size"}, values={"--backend": {"onnx": "onnxruntime"}})
    args = ["m", "--batch", "2", "--backend", "onnx", "--backend=onnx", "--", "--batch"]
    assert r.rewrite(args) == [
        "m", "--batch-size", "2", "--backend", "onnxruntime", "--backend=onnxruntime", "--", "--batch"
    ]  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("warning:") == 3 and "--batch is deprecated; use --batch-size" in err
    assert "--backend onnx is deprecated; use --backend onnxruntime" in err
    assert r.rewrite(["--batch=3", "--backend", "openvino"]) == ["--batch-size=3", "--backend", "openvino"]
    new = ["--batch-size", "2", "--backend", "onnxruntime"]
    capsys.readouterr()
    assert r.rewrite(list(new)) == new and capsys.readouterr().err == ""  # new names: silent
    with pytest.raises(click.UsageError, match="--batch is the old name of --batch-size"):
        r.rewrite(["--batch-size", "2", "--batch", "3"])


def test_old_option_name_works_and_warns_new_name_is_silent(capsys):
    """`models --size` is `--image-size`: both reach the same check (exit 1, its message)."""
    code, _, err = run_main(capsys, "models", "--size", "100")
    assert code == 1 and "--size is deprecated; use --image-size" in err, err
    assert "--image-size must be a positive multiple of 16, got 100" in err
    code, _, err = run_main(capsys, "models", "--image-size", "100")
    assert code == 1 and DEPRECATED not in err and "multiple of 16, got 100" in err
    code, _, err = run_main(capsys, "models", "--size", "64", "--image-size", "64")
    assert code == 2 and "old name of --image-size" in err


@pytest.mark.parametrize(
    ("verb", "old", "new", "message"),
    [
        (
            ["bench", "m.onnx"],
            ["--batch", "x"],
            ["--batch-size", "x"],
            "--batch-size must be comma-separated",
        ),
        (
            ["predict", "m.onnx", "img", "--out", "o"],
            ["--batch", "0"],
            ["--batch-size", "0"],
            "--batch-size, --workers and --threads must be at least 1",
        ),
    ],
)
def test_batch_is_batch_size_everywhere(capsys, tmp_path, verb, old, new, message):
    for args, warned in ((old, True), (new, False)):
        code, _, err = run_main(capsys, *verb, *args)
        assert code == 1 and message in err, err
        assert (f"{old[0]} is deprecated; use {new[0]}" in err) is warned, err


def test_model_precision_keeps_precision_as_old_name(capsys, tmp_path):
    """predict/view: --precision is the old name of --model-precision (an unknown model file shows
    the value reached the Predictor as --model-precision's)."""
    for verb in (
        ["predict", tmp_path / "m.onnx", tmp_path, "--out", tmp_path / "o"],
        ["view", tmp_path / "m"],
    ):
        code, _, err = run_main(capsys, *verb, "--precision", "int8", "--model-precision", "fp32")
        assert code == 2 and "--precision is the old name of --model-precision" in err, err
        code, _, err = run_main(capsys, *verb, "--precision", "int8")
        assert code == 1 and "--precision is deprecated; use --model-precision" in err, err


def test_serve_and_node_old_flags_reach_the_new_settings(capsys, tmp_path):
    missing = tmp_path / "missing"
    code, _, err = run_main(capsys, "serve", "--out", tmp_path / "run", "--certs", missing)
    assert code == 1 and "--certs is deprecated; use --tls-certs" in err
    assert f"--tls-certs: {missing} does not exist" in err, err
    node = ["node", "--data", tmp_path, "--superlink", "a:1", "--client-id", "0"]
    code, _, err = run_main(capsys, *node, "--ca", missing)
    assert code == 1 and "--ca is deprecated; use --tls-ca" in err and f"--tls-ca: {missing}" in err, err
    code, _, err = run_main(capsys, *node, "--tls-ca", missing)
    assert code == 1 and DEPRECATED not in err and f"--tls-ca: {missing}" in err, err
    code, _, err = run_main(capsys, *node, "--insecure", "--teacher-backend", "gpu")
    assert code == 1 and "--teacher-backend is deprecated; use --teacher-variant" in err, err
    assert "unknown teacher_variant 'gpu'; choose one of: auto, onnx-fp32" in err, err
    code, _, err = run_main(
        capsys, "serve", "--out", tmp_path / "r2", "--insecure", "--teacher-runtime", "gpu"
    )
    assert code == 1 and "--teacher-runtime is deprecated; use --teacher-format" in err, err
    assert "unknown teacher_format 'gpu'; choose one of: onnx, torch" in err, err


def test_settings_files_accept_old_keys_with_a_warning(tmp_path):
    node = tmp_path / "node.toml"
    node.write_text('superlink = "a:1"\nclient_id = 0\nca = "ca.pem"\nteacher_backend = "openvino-int8"\n')
    with pytest.warns(sc.ConfigWarning) as caught:
        values = sc.load_node_file(node).values
    assert values["tls_ca"] == tmp_path / "ca.pem" and values["teacher_variant"] == "openvino-int8"
    assert len(caught) == 2 and "setting ca is deprecated; use tls_ca" in str(caught[0].message)
    server = tmp_path / "server.toml"
    server.write_text('out = "run"\ncerts = "c"\nteacher_runtime = "torch"\n')
    with pytest.warns(sc.ConfigWarning):
        values = sc.load_server_file(server).values
    assert values["tls_certs"] == tmp_path / "c" and values["teacher_format"] == "torch"
    both = tmp_path / "both.toml"
    both.write_text('out = "run"\ncerts = "c"\ntls_certs = "d"\n')
    with pytest.raises(SamfedError, match="has both certs and tls_certs"):
        sc.load_server_file(both)
    assert sc.renamed_flags(sc.NODE) == {"--ca": "--tls-ca", "--teacher-backend": "--teacher-variant"}


def test_help_shows_only_the_new_names(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the option names in narrow terminals
    code, out, _ = run_main(capsys, "predict", "--help")
    assert code == 0 and "--batch-size" in out and "--model-precision" in out
    assert "--batch " not in out and "--precision " not in out
    code, out, _ = run_main(capsys, "node", "--help")
    assert code == 0 and "--tls-ca" in out and "--ca " not in out and "--teacher-backend" not in out


def test_vocabularies_are_the_registries():
    from samfed.config import RunConfig
    from samfed.data.partition import SCHEMES
    from samfed.data.synth import DOMAINS
    from samfed.method.aggregation import AGGREGATORS
    from samfed.method.methods import METHODS

    assert names_of("samfed.data.synth", "DOMAINS").choices == DOMAINS
    assert names_of("samfed.data.partition", "SCHEMES").choices == SCHEMES
    assert setting_choices("method").choices == tuple(METHODS)
    assert setting_choices("aggregation").choices == ("auto", *AGGREGATORS)
    assert set(setting_choices("agreement").choices) == set(
        RunConfig.__dataclass_fields__["agreement"].metadata["rule"].names()
    )


def test_a_name_outside_the_registry_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--method", "no-such-method", "--out", tmp_path / "r")
    assert code == 2 and "no-such-method" in err and "fixmatch" in err, err
    code, _, err = run_main(capsys, "data", "split", tmp_path, "--partition", "by-hospital")
    assert code == 2 and "by-hospital" in err and "dirichlet" in err, err
