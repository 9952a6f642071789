"""Wall time per round: SAM-Fed on real Flower processes (loopback) vs the in-process runner.

Same config, seed, data and teacher maps for both (the maps are computed once by the in-process
run and shared through the teacher-map cache, so neither side pays for the teacher in the rounds).
Writes federation.json + federation.md under --out: per round the in-process wall time, the Flower
round wall time, and per node the local-update wall/CPU time, the ClientApp start-up, the memory at
round start and the round's peak memory; and whether the final global weights are identical.

    python benchmarks/federation.py --out bench_out/federation --rounds 3 --images 24 --size 64

`--host 0.0.0.0` routes the nodes through the Fleet gateway, as `samfed serve` always does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/federation"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=24, help="synthetic polyp images in total")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--host", default="127.0.0.1", help="server address; non-loopback: through the Fleet gateway"
    )
    args = ap.parse_args()

    import torch

    from samfed.config import RunConfig
    from samfed.data.synth import write_synthetic
    from samfed.federation.options import ServerOptions
    from samfed.federation.processes import LocalFederation, NodeSpec, is_loopback
    from samfed.train.runner import train

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = write_synthetic("polyp", args.images, out / "data", seed=0, size=max(args.size, 64))
    cfg = RunConfig(
        data=str(data), clients=args.clients, image_size=args.size, rounds=args.rounds, server_epochs=2,
        teacher_mode="none", labeled_fraction=0.25, val_fraction=0.2, partition="iid", threads=args.threads,
        batch_size=4, teacher_cache=str(out / "teacher-cache"),
    )  # fmt: skip
    t0 = time.perf_counter()
    train(cfg, out / "inproc", progress=False)
    inproc_total = time.perf_counter() - t0
    inproc = [json.loads(x) for x in (out / "inproc" / "metrics.jsonl").read_text().splitlines()]
    inproc_rounds = {r["round"]: r["seconds"] for r in inproc if r.get("event") == "round" and r["round"] > 0}

    run_dir = out / "flower-run"
    run_dir.mkdir()
    cfg.save(run_dir / "config.toml")
    shutil.copy(out / "inproc" / "split.json", run_dir / "split.json")
    nodes = [
        NodeSpec(
            {
                "data-path": str(data),
                "split": str(run_dir / "split.json"),
                "partition-id": k,
                "name": f"site-{k}",
                "work-dir": str(out / f"node-{k}"),
                "teacher-cache": cfg.teacher_cache,
                "threads": args.threads,
            }
        )  # fmt: skip
        for k in range(args.clients)
    ]
    opts = ServerOptions(run_dir=str(run_dir), teacher_runtime="torch", connect_timeout=300)
    t0 = time.perf_counter()
    with LocalFederation(out / "flower", nodes, host=args.host) as fed:
        fed.submit(opts.to_run_config())
        status_file = run_dir / "federation" / "status.json"
        while True:
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            if status.get("state") in ("finished", "failed"):
                break
            time.sleep(1)
    flower_total = time.perf_counter() - t0
    if status["state"] != "finished":
        raise SystemExit(f"federation failed: {status}")

    a = torch.load(out / "inproc" / "state" / "checkpoint.pt", weights_only=True)["global"]
    b = torch.load(run_dir / "state" / "checkpoint.pt", weights_only=True)["global"]
    identical = all(torch.equal(a[k], b[k]) for k in a)
    flower_rounds = json.loads((run_dir / "federation" / "rounds.json").read_text())
    node_reports = {
        f"site-{k}": [
            json.loads(x) for x in (out / f"node-{k}" / "node-report.jsonl").read_text().splitlines()
        ]
        for k in range(args.clients)
    }
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "identical_global_weights": identical,
        "inprocess_total_s": inproc_total,
        "flower_total_s": flower_total,
        "rounds": [
            {
                "round": fr["round"],
                "inprocess_s": inproc_rounds.get(fr["round"]),
                "flower_s": fr["round_wall_s"],
                "nodes": {
                    name: next(r for r in reps if r["round"] == fr["round"])
                    for name, reps in node_reports.items()
                },
            }
            for fr in flower_rounds
        ],  # fmt: skip
    }
    (out / "federation.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Rounds: {args.rounds}, clients: {args.clients}, {args.images} images at {args.size} px, "
        f"{args.threads} thread(s) per node, server on {args.host}"
        f"{'' if is_loopback(args.host) else ' (Fleet gateway)'}. "
        f"Identical final global weights: {identical}.",
        "",
        "| round | in-process s | Flower s | node | local wall s | local CPU s | ClientApp start-up s "
        "| RSS at start MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rounds"]:
        for name, n in r["nodes"].items():
            cells = [
                r["round"],
                f"{r['inprocess_s']:.2f}",
                f"{r['flower_s']:.1f}",
                name,
                f"{n['wall_s']:.1f}",
            ]
            cells += [f"{n['cpu_s']:.1f}", f"{n['process_startup_s']:.1f}", f"{n['rss_start_mb']:.0f}"]
            cells += [f"{n['peak_rss_mb']:.0f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    (out / "federation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
