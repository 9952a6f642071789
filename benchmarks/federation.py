"""Wall time per round: SAM-Fed on real Flower processes (loopback) vs the in-process runner.

Same config, seed, data and teacher maps for both (the maps are computed once by the in-process
run and shared through the teacher-map cache, so neither side pays for the teacher in the rounds).
Writes federation.json + federation.md under --out: per round the in-process wall time, the Flower
round wall time and their ratio, and per node the local-update wall/CPU time, the ClientApp
start-up, the ClientApp's memory at round start and its peak; per node the peak memory of the whole
SuperNode process tree (SuperNode, SuperExec, warm executor, ClientApps: proportional set size, so
pages shared between them count once); and whether the final global weights are identical.

    python benchmarks/federation.py --out bench_out/federation              # tiny: 24 images, 64 px
    python benchmarks/federation.py --out bench_out/federation-real --realistic
    # realistic: the default student at 256 px, about 150 images per client, 1 local epoch

`--host 0.0.0.0` routes the nodes through the Fleet gateway, as `samfed serve` always does.
SAMFED_WARM_CLIENTAPP=0 runs the nodes without the warm ClientApp executor, for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


TINY = {"rounds": 3, "images": 24, "size": 64, "labeled_fraction": 0.25, "val_fraction": 0.2, "batch_size": 4}
# 430 images: 15 % labeled on the server, 15 % validation, the rest (about 150 each) on 2 clients
REALISTIC = {"rounds": 2, "images": 430, "size": 256, "labeled_fraction": 0.15, "val_fraction": 0.15,
             "batch_size": 8}  # fmt: skip


class TreeMemory:
    """Samples, every `interval` s, each SuperNode's process tree: the peak of the summed
    proportional set size (PSS; RSS where the platform lacks it)."""

    def __init__(self, fed, interval: float = 0.5):
        self.fed, self.interval = fed, interval
        self.peak_mb: dict[int, float] = {}
        self.warm_seen = False  # a warm ClientApp executor ran in a node's tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        from samfed.federation.processes import process_tree

        while not self._stop.wait(self.interval):
            for k, node in enumerate(self.fed.nodes):
                total = 0
                for p in process_tree(node.pid):
                    try:
                        if not self.warm_seen:
                            self.warm_seen = "samfed.federation.warm_exec" in " ".join(p.cmdline())
                        info = p.memory_full_info()
                        total += getattr(info, "pss", info.rss)
                    except psutil.Error:
                        continue
                self.peak_mb[k] = max(self.peak_mb.get(k, 0.0), total / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/federation"))
    ap.add_argument(
        "--realistic", action="store_true", help="the default student at 256 px, ~150 images per client"
    )
    ap.add_argument("--rounds", type=int, default=None, help="default: 3 tiny, 2 realistic")
    ap.add_argument("--images", type=int, default=None, help="synthetic polyp images in total")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--host", default="127.0.0.1", help="server address; non-loopback: through the Fleet gateway"
    )
    args = ap.parse_args()
    profile = REALISTIC if args.realistic else TINY
    for key in ("rounds", "images", "size"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])

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
        teacher_mode="none", labeled_fraction=profile["labeled_fraction"],
        val_fraction=profile["val_fraction"], partition="iid", threads=args.threads,
        batch_size=profile["batch_size"], teacher_cache=str(out / "teacher-cache"),
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
    with LocalFederation(out / "flower", nodes, host=args.host) as fed, TreeMemory(fed) as memory:
        fed.submit(opts.to_run_config())
        status_file = run_dir / "federation" / "status.json"
        while True:
            try:
                status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            except json.JSONDecodeError:  # caught mid-write
                status = {}
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
        "node_tree_peak_mb": {f"site-{k}": mb for k, mb in sorted(memory.peak_mb.items())},
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
    inproc_s = [r["inprocess_s"] for r in result["rounds"] if r["inprocess_s"]]
    flower_s = [r["flower_s"] for r in result["rounds"]]
    result["summary"] = {
        "inprocess_round_s": statistics.median(inproc_s),
        "flower_round_s": statistics.median(flower_s),
        "ratio": statistics.median(flower_s) / statistics.median(inproc_s),
        "warm_clientapp": memory.warm_seen,
    }
    (out / "federation.json").write_text(json.dumps(result, indent=1))
    summ = result["summary"]
    memory_line = ", ".join(f"{k} {v:.0f} MB" for k, v in result["node_tree_peak_mb"].items())
    lines = [
        f"{'Realistic' if args.realistic else 'Tiny'} config. Rounds: {args.rounds}, clients: "
        f"{args.clients}, {args.images} images at {args.size} px, students {cfg.students}, "
        f"{cfg.local_epochs} local epoch(s), {args.threads} thread(s) per node, server on {args.host}"
        f"{'' if is_loopback(args.host) else ' (Fleet gateway)'}, warm ClientApp executor "
        f"{'on' if summ['warm_clientapp'] else 'off'}. Identical final global weights: {identical}.",
        "",
        f"Median round: in-process {summ['inprocess_round_s']:.2f} s, Flower {summ['flower_round_s']:.2f} s, "
        f"ratio {summ['ratio']:.2f}. Node peak memory (process tree, PSS): {memory_line}.",
        "",
        "| round | in-process s | Flower s | ratio | node | local wall s | local CPU s "
        "| ClientApp start-up s | RSS at start MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rounds"]:
        for name, n in r["nodes"].items():
            cells = [
                r["round"],
                f"{r['inprocess_s']:.2f}",
                f"{r['flower_s']:.2f}",
                f"{r['flower_s'] / r['inprocess_s']:.2f}",
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
