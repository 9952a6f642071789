"""The run report: Markdown (report.md) and a self-contained HTML page (report.html, PNGs inlined)."""

from __future__ import annotations

import base64
import html
import platform
from pathlib import Path


def hardware() -> str:
    """One line: CPU model, logical cores, torch threads, torch version, GPU (when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    try:
        import torch

        tv = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            tv += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover
        tv = "no torch"
    return f"{cpu}, {os.cpu_count()} logical cores, {tv}"


def _fmt(v, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def round_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """Per round: global val Dice/HD95, mean over clients of agreement and of pseudo-label/teacher
    accuracy and Dice (vs ground truth, where it exists)."""
    header = [
        "round",
        "val Dice",
        "val HD95",
        "agreement",
        "pseudo-label acc.",
        "teacher acc.",
        "pseudo-label Dice",
        "teacher Dice",
        "seconds",
    ]
    rows = []
    for r in (x for x in records if x.get("event") == "round"):
        clients = [c for c in records if c.get("event") == "client" and c.get("round") == r["round"]]

        def mean(key, clients=clients):
            v = [c[key] for c in clients if c.get(key) is not None]
            return sum(v) / len(v) if v else None

        rows.append(
            [
                r["round"],
                r.get("val_dice"),
                r.get("val_hd95"),
                mean("agreement_rate"),
                mean("pl_acc"),
                mean("teacher_acc"),
                mean("pl_dice"),
                mean("teacher_dice"),
                r.get("seconds"),
            ]
        )
    return header, rows


def final_rows(summary: dict) -> tuple[list[str], list[list]]:
    header = ["model", "arch", "split", "Dice mean", "Dice std", "HD95 mean (px)", "n"]
    rows = []
    for m in summary.get("models", []):
        rows.append(
            [
                m["model"],
                m["arch"],
                m["split"],
                m.get("dice_mean"),
                m.get("dice_std"),
                m.get("hd95_mean"),
                m.get("n"),
            ]
        )
    return header, rows


def write_report(run_root: Path, summary: dict, records: list[dict], plots: list[Path]) -> tuple[Path, Path]:
    """Write report.md and report.html into the run directory; returns both paths."""
    cfg = summary["config"]
    title = f"samfed run: {cfg['method']} ({', '.join(cfg['students'])})"
    parts = [f"# {title}", ""]
    parts.append(
        f"Data: `{summary['data']}` at {cfg['image_size']} px; {cfg['clients']} clients, partition "
        f"`{cfg['partition']}`, labeled fraction {cfg['labeled_fraction']}; "
        f"split sizes {summary['split_sizes']}."
    )
    parts.append(
        f"Rounds {cfg['rounds']}, local epochs {cfg['local_epochs']}, seed {cfg['seed']}, aggregation "
        f"`{summary['aggregation']}`, agreement `{cfg['agreement']}`."
    )
    if summary.get("teacher"):
        t = summary["teacher"]
        parts.append(
            f"Teacher: {t.get('name')} (mode {t.get('mode')}, prompt {t.get('prompt')}), "
            f"validation Dice of its maps {_fmt(t.get('val_dice'))}."
        )
    parts.append(f"Wall time {summary['seconds']:.0f} s on {summary['hardware']}.")
    parts += ["", "## Final scores (at the working resolution)", "", md_table(*final_rows(summary)), ""]
    parts += ["## Per round", "", md_table(*round_rows(records)), ""]
    parts += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    md = "\n".join(parts)
    run_root.joinpath("report.md").write_text(md, encoding="utf-8")
    run_root.joinpath("report.html").write_text(_html(title, md, plots), encoding="utf-8")
    return run_root / "report.md", run_root / "report.html"


def _html(title: str, md: str, plots: list[Path]) -> str:
    """Minimal Markdown -> HTML for this report's subset (headings, paragraphs, tables, images)."""
    out, table = [], []

    def flush():
        if table:
            cells = [
                [c.strip() for c in line.strip("|").split("|")]
                for line in table
                if not line.startswith("|---")
            ]
            head, body = cells[0], cells[1:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            table.clear()

    images = {p.name: p for p in plots}
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            name = line.split("(plots/", 1)[1].rstrip(")")
            data = base64.b64encode(images[name].read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
