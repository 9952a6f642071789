"""`samfed train --engine flower-sim`: the Flower ServerApp/ClientApp in Flower's simulation runtime.

The slow test runs six virtual SuperNodes (Ray) on the tiny config and checks that the global and
client weights equal the in-process runner's bit for bit; it needs the `sim` extra (CI installs
it) and skips only where Ray is not installed.
"""

from __future__ import annotations

import json

import psutil
import pytest
import torch
from run_helpers import one_error_line, run_cli, same, tiny, weights

from samfed.errors import SamfedError
from samfed.federation import simulation as sim


def _nodes_file(tmp_path, monkeypatch) -> list[dict]:
    configs = sim.node_configs(tmp_path / "data", tmp_path / "split.json", tmp_path, 2, 1, tmp_path / "c")
    monkeypatch.setenv(sim.NODES_ENV, str(sim.write_nodes_file(tmp_path / "nodes.json", configs)))
    return configs


def test_virtual_nodes_get_their_settings_from_the_local_nodes_file(tmp_path, monkeypatch):
    configs = _nodes_file(tmp_path, monkeypatch)
    virtual = {sim.PARTITION_ID: 1, sim.NUM_PARTITIONS: 2}  # all Flower's runtime gives a node
    assert sim.simulated_node_config(virtual) == configs[1]
    assert configs[1]["work-dir"] == str(tmp_path / "node-1") and configs[1]["threads"] == 1
    real = {"data-path": "/clinic/images", sim.PARTITION_ID: 1, sim.NUM_PARTITIONS: 2}
    assert sim.simulated_node_config(real) == real  # a node's own settings always win
    assert sim.simulated_node_config({sim.PARTITION_ID: 1}) == {sim.PARTITION_ID: 1}  # not simulated
    with pytest.raises(SamfedError, match="no node with partition-id 5"):
        sim.simulated_node_config({sim.PARTITION_ID: 5, sim.NUM_PARTITIONS: 6})
    monkeypatch.delenv(sim.NODES_ENV)
    assert sim.simulated_node_config(virtual) == virtual  # outside a simulation: unchanged


def test_flower_sim_without_ray_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sim, "ray_installed", lambda: False)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--engine", "flower-sim", "--clients", 6, "--out", out)
    assert code != 0 and "samfed[sim]" in one_error_line(err)
    assert not out.exists()


def _left_behind(nodes_file: str) -> list[int]:
    """PIDs of processes still running with this simulation's nodes file in their environment."""
    pids = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(sim.NODES_ENV) == nodes_file and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.slow
def test_six_simulated_clients_equal_the_inprocess_runner(tmp_path, capsys):
    pytest.importorskip("ray")
    from samfed.train.runner import train

    cfg = tiny(clients=6)
    cfg.save(tmp_path / "tiny.toml")
    out = tmp_path / "sim"
    code, _, err = run_cli(
        capsys, "train", "--engine", "flower-sim", "--config", tmp_path / "tiny.toml", "--out", out, "--quiet"
    )
    assert code == 0, err
    threads = torch.get_num_threads()
    try:
        ref = train(cfg, tmp_path / "inproc", progress=False).run_dir
    finally:
        torch.set_num_threads(threads)
    for sub in ("global", *(f"clients/{k}" for k in range(6))):
        assert same(weights(ref / sub), weights(out / sub)), sub
    status = json.loads((out / "federation" / "status.json").read_text())
    assert status["state"] == "finished" and len(status["nodes"]) == 6
    assert set(status["nodes"].values()) == {"done"}
    assert (out / "report.html").is_file() and (out / "manifest.json").is_file()
    assert not _left_behind(str(out / sim.FOLDER / sim.NODES_FILE))  # SuperLink, Ray: all stopped
