"""The run report: Markdown (report.md) and its HTML twin (report.html, rendered by markdown-it-py,
every PNG inlined as a data URI so the page is one self-contained file).

It leads with the method against the `supervised` baseline on the same split (round 0, final
validation Dice and HD95, per-round curves), then a qualitative panel of validation images, the
training curves, every model's scores, the per-round table, and how the run was made (data, split
sizes, teacher, time per stage, versions, git commit, command line).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from samfed.train.provenance import hardware

__all__ = ["hardware", "md_table", "render_html", "write_report"]

Fmt = Callable[[object], str]


def _num(nd: int, unit: str = "") -> Fmt:
    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool) or not isinstance(v, int | float):
            return str(v)
        return f"{v:.{nd}f}{unit}"

    return fmt


DICE, HD95, RATE, SECONDS = _num(3), _num(1), _num(3), _num(1, " s")


def _text(v: object) -> str:
    return "-" if v is None else str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def md_table(header: list[str], rows: list[list], formats: list[Fmt] | None = None) -> str:
    """A Markdown table; column j of each row formatted by formats[j] (default: str)."""
    formats = formats or [_text] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(f(c)) for f, c in zip(formats, r, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.3f}"


# ---- sections ----------------------------------------------------------------------------------


def comparison_section(summary: dict) -> list[str]:
    """The lead: the method and the supervised baseline side by side, one sentence saying which is
    ahead, the teacher warning when there is one, and what `supervised` means."""
    c = summary.get("comparison") or {}
    method = c.get("method") or summary["config"]["method"]
    has_test = c.get("test_dice") is not None
    header = ["model", "round 0 val Dice", "final val Dice", "final val HD95 (px)"]
    formats = [_text, DICE, DICE, HD95]
    if has_test:
        header.append("final test Dice")
        formats.append(DICE)
    rows = [[f"**{method}** (global model)", c.get("round0_val_dice"), c.get("val_dice"), c.get("val_hd95")]]
    if has_test:
        rows[0].append(c.get("test_dice"))
    sup = c.get("supervised_val_dice")
    if sup is not None:
        rows.append(
            ["supervised (server images only)", c.get("round0_val_dice"), sup, c.get("supervised_val_hd95")]
        )
        if has_test:
            rows[1].append(c.get("supervised_test_dice"))
    out = [md_table(header, rows, formats), ""]
    final, r0 = c.get("val_dice"), c.get("round0_val_dice")
    sentence = f"Final validation Dice of {method}: {DICE(final)}, {_delta(final, r0)} against round 0"
    if sup is not None:
        sentence += f" and {_delta(final, sup)} against supervised"
    out += [sentence + ".", ""]
    out += [f"**Warning:** {w}" for w in summary.get("warnings", [])] + (
        [""] if summary.get("warnings") else []
    )
    if sup is not None:
        out += [
            "Round 0 is the global model after server initialisation (trained on the labeled server "
            "images D_p), shared by both rows. *supervised* then goes on training on D_p alone, each "
            "round as many steps as an average client update, without the clients' images or the "
            "teacher: the same as `samfed train --method supervised` with these settings.",
            "",
        ]
    return out


def _plot(plots: dict[str, Path], name: str, alt: str) -> list[str]:
    return [f"![{alt}](plots/{plots[name].name})", ""] if name in plots else []


def qualitative_section(plots: dict[str, Path]) -> list[str]:
    if "qualitative" not in plots:
        return []
    return [
        "## Validation images",
        "",
        "A few validation images, from the final global model's worst to its best Dice. White "
        "outline: ground truth. Teacher map: the teacher's probability (shade) and its 0.5 contour. "
        "Pseudo-label: what the method's last round would train on for such an unlabeled image "
        "(teacher, global model and client 0 combined). Final student: the global model's mask.",
        "",
        *_plot(plots, "qualitative", "qualitative panel"),
    ]


def final_rows(summary: dict) -> tuple[list[str], list[list], list[Fmt]]:
    header = ["model", "arch", "split", "Dice mean", "Dice std", "HD95 mean (px)", "images"]
    rows = [
        [
            m["model"],
            m["arch"],
            m["split"],
            m.get("dice_mean"),
            m.get("dice_std"),
            m.get("hd95_mean"),
            m.get("n"),
        ]
        for m in summary.get("models", [])
    ]
    return header, rows, [_text, _text, _text, DICE, DICE, HD95, _text]


def round_rows(records: list[dict]) -> tuple[list[str], list[list], list[Fmt]]:
    """Per round: global and supervised val Dice, global HD95, mean over clients of the client
    models' val Dice, agreement and pseudo-label/teacher Dice (vs ground truth), and seconds
    (round 0: the server initialisation)."""
    header = ["round", "val Dice", "val HD95", "supervised val Dice", "clients' val Dice", "agreement",
              "pseudo-label Dice", "teacher Dice", "time"]  # fmt: skip
    base = {r["round"]: r.get("val_dice") for r in records if r.get("event") == "baseline"}
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
                base.get(r["round"], r.get("val_dice") if r["round"] == 0 and base else None),
                mean("val_dice"),
                mean("agreement_rate"),
                mean("pl_dice"),
                mean("teacher_dice"),
                r.get("seconds"),
            ]
        )
    return header, rows, [_text, DICE, HD95, DICE, DICE, RATE, DICE, DICE, SECONDS]


def run_section(summary: dict) -> list[str]:
    """Data, split sizes, settings, teacher, time per stage, versions, commit and command line."""
    cfg = summary["config"]
    s = summary["split_sizes"]
    out = ["## The run", ""]
    out.append(
        f"Data: `{summary['data']}` at {cfg['image_size']} px; {cfg['clients']} clients, partition "
        f"`{cfg['partition']}`, labeled fraction {cfg['labeled_fraction']}."
    )
    out.append("")
    clients = s.get("clients", [])
    header = ["server labeled (D_p)", *[f"client {k}" for k in range(len(clients))], "validation", "test"]
    out += [md_table(header, [[s.get("server_labeled"), *clients, s.get("val"), s.get("test")]]), ""]
    out.append(
        f"Method `{cfg['method']}`, students {', '.join(f'`{x}`' for x in cfg['students'])}; "
        f"{cfg['rounds']} rounds of {cfg['local_epochs']} local epoch(s), {cfg['server_epochs']} "
        f"server epochs, aggregation `{summary['aggregation']}`, agreement `{cfg['agreement']}`, "
        f"seed {cfg['seed']}."
    )
    out.append("")
    t = summary.get("teacher") or {}
    if t:
        out += [
            f"Teacher: {t.get('name')} (mode {t.get('mode')}, prompt {t.get('prompt')}); validation "
            f"Dice of its maps {DICE(t.get('val_dice'))}"
            + (
                f", {DICE(t['best_val_dice_holdout'])} on its own hold-out of D_p"
                if t.get("best_val_dice_holdout") is not None
                else ""
            )
            + ".",
            "",
        ]
    stages = summary.get("stages") or {}
    if stages:
        out += ["### Time per stage", ""]
        rows = [[name, sec] for name, sec in stages.items()]
        rows.append(["**wall time of this process**", summary.get("seconds")])
        out += [md_table(["stage", "time"], rows, [_text, SECONDS]), ""]
    out += ["### Versions", ""]
    versions = summary.get("versions") or {}
    out += [md_table(list(versions), [[v or "not installed" for v in versions.values()]]), ""]
    out += [
        f"Git commit: `{summary.get('git_commit') or 'unknown'}`. Hardware: {summary.get('hardware')}.",
        "",
    ]
    if summary.get("command"):
        out += ["Command line:", "", "```", summary["command"], "```", ""]
    return out


def report_markdown(summary: dict, records: list[dict], plots: list[Path]) -> tuple[str, str]:
    """(title, Markdown text); images are referenced as plots/<name>.png."""
    cfg = summary["config"]
    by_stem = {p.stem: p for p in plots}
    has_baseline = (summary.get("comparison") or {}).get("supervised_val_dice") is not None
    title = f"{cfg['method']} vs supervised" if has_baseline else f"samfed run: {cfg['method']}"
    title += f" ({', '.join(cfg['students'])})"
    parts = [f"# {title}", ""]
    parts += comparison_section(summary)
    parts += _plot(by_stem, "val_dice", "validation Dice per round")
    parts += qualitative_section(by_stem)
    if "loss" in by_stem or "agreement" in by_stem:
        parts += ["## Training", ""]
        parts += _plot(by_stem, "loss", "training loss per round")
        parts += _plot(by_stem, "agreement", "agreement and label quality per round")
    parts += ["## Scores of every model (at the working resolution)", "", md_table(*final_rows(summary)), ""]
    parts += ["## Per round", "", md_table(*round_rows(records)), ""]
    parts += run_section(summary)
    return title, "\n".join(parts)


def write_report(run_root: Path, summary: dict, records: list[dict], plots: list[Path]) -> tuple[Path, Path]:
    """Write report.md and report.html into the run directory; returns both paths."""
    title, md = report_markdown(summary, records, plots)
    run_root.joinpath("report.md").write_text(md, encoding="utf-8")
    run_root.joinpath("report.html").write_text(render_html(title, md, run_root), encoding="utf-8")
    return run_root / "report.md", run_root / "report.html"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222;"
    "line-height:1.45}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 9px;text-align:right;white-space:nowrap}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}"
    "code{font-size:.92em}"
)


def render_html(title: str, md: str, root: Path) -> str:
    """The Markdown as one HTML page (markdown-it-py, CommonMark + tables, raw HTML off); images
    that are PNG files under `root` become data URIs."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(md)
    for tok in tokens:
        for child in tok.children or []:
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                path = root / src
                if src.endswith(".png") and path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode()
                    child.attrSet("src", f"data:image/png;base64,{data}")
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n"
    )
