"""``mobilenets paper [TOPIC]``: the papers' tables and figures, recomputed (issue 6).

The computations live in :mod:`mobilenets.analysis.paper` and the options in
:mod:`mobilenets.cli.parser`; this module only prints aligned text (or JSON) and writes
``<out>/<topic>.json`` and the figures' PNGs.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..analysis import paper
from ..errors import MobilenetsError
from ..models.conventions import check_choice

#: One topic: (args, out dir) -> (result, text, files written besides the JSON).
Runner = Callable[[argparse.Namespace, Path], tuple[object, str, list[Path]]]


def run_paper(args: argparse.Namespace) -> int:
    """Run the chosen topics, print them and write their files into ``--out``."""
    topics = paper.DEFAULT_TOPICS if args.topic is None else \
        (check_choice("topic", args.topic, paper.TOPICS),)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MobilenetsError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MobilenetsError(f"cannot write to {out}: {e.strerror or e}; choose another --out") from e
    collected: dict[str, object] = {}
    for topic in topics:
        result, text, files = RUNNERS[topic](args, out)
        data = paper.to_dict(result)
        json_path = out / f"{topic}.json"
        json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        collected[topic] = data
        if not args.json:
            print(f"== {topic} ==\n{text}")
            print("wrote " + ", ".join(str(f) for f in [json_path, *files]) + "\n")
    if args.json:
        print(json.dumps(collected, indent=2, ensure_ascii=False))
    return 0


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned text: numbers right-aligned, everything else left-aligned."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if num else c.ljust(w)  # noqa: E731
                              for c, w, num in zip(r, widths, numeric)).rstrip()
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


_NUMBER = re.compile(r"^[+-]?[\d,.]+(%|×| M)?(/[\d,.]+)?$")


def _is_number(text: str) -> bool:
    return text in ("", "-") or bool(_NUMBER.match(text))


def _tables(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    result = paper.tables()
    notes: list[str] = []
    rows = []
    for r in result.rows:
        if r.note and r.note not in notes:
            notes.append(r.note)
        ref = f"[{notes.index(r.note) + 1}]" if r.note else ""
        width = f"{r.width_mult:g}" + (" tf" if r.width_convention == "tf" else "")
        rows.append((r.source, r.label, width, r.resolution, f"{r.madds / 1e6:.2f}",
                     f"{r.published_madds_m:g}", f"{r.madds_diff_m:+.2f}", f"{r.params / 1e6:.3f}",
                     f"{r.published_params_m:g}", f"{r.params_diff_m:+.3f}", f"{r.mark} {ref}".strip()))
    text = _table(("source", "row", "width", "res", "MAdds M", "paper", "Δ", "params M",
                   "paper", "Δ", "mark"), rows)
    text += "\n\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    text += "\n\nV1 Table 2 (1.0 MobileNet-224; params = conv/FC weights)\n" + _table(
        ("type", "MAdds", "share", "paper", "params", "share", "paper", "note"),
        [(s.type, f"{s.madds:,}", f"{s.madds_pct:.2f}%", f"{s.published_madds_pct:.2f}%",
          f"{s.params:,}", f"{s.params_pct:.2f}%", f"{s.published_params_pct:.2f}%", s.note)
         for s in result.v1_table_2])
    text += "\n\nV1 Table 3 (one layer, D_K=3, M=N=512, D_F=14, cumulative)\n" + _table(
        ("modification", "M", "N", "D_F", "MAdds", "M", "paper", "params", "M", "paper", "mark"),
        [(c.label, c.m, c.n, c.df, f"{c.madds:,}", f"{c.madds / 1e6:.2f}", f"{c.published_madds_m:g}",
          f"{c.params:,}", f"{c.params / 1e6:.3f}", f"{c.published_params_m:g}",
          "✓" if c.agrees else "✗") for c in result.v1_table_3])
    return result, text, []


def _cost(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    result = paper.cost(args.dk, args.m, args.n, args.df)
    c, b = result.layer, result.blocks
    text = _table(
        (f"D_K={c.dk} M={c.m} N={c.n} D_F={c.df}", "MAdds", "params"),
        [("standard conv", f"{c.standard_madds:,}", f"{c.standard_params:,}"),
         ("depthwise", f"{c.depthwise_madds:,}", ""),
         ("pointwise", f"{c.pointwise_madds:,}", ""),
         ("depthwise separable", f"{c.separable_madds:,}", f"{c.separable_params:,}")])
    text += (f"\nseparable / standard = {c.ratio:.4f} (1/N + 1/D_K² = {c.formula_ratio:.4f}): "
             f"{1 / c.ratio:.1f}× less computation")
    text += "\n\nV1 block vs V2 block (conv weights, no BN; MAdds at " \
            f"{b.resolution}×{b.resolution})\n" + _table(
                ("block", "params", "MAdds"),
                [("V2 inverted residual 24→144→24", f"{b.v2_params:,}", f"{b.v2_madds:,}"),
                 ("V1 depthwise-separable on 144", f"{b.v1_params:,}", f"{b.v1_madds:,}"),
                 ("V1 / V2", f"{b.params_ratio:.2f}×", f"{b.madds_ratio:.2f}×")])
    return result, text, []


def _memory(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    result = paper.memory()

    def cell(t: paper.LargestTensor) -> str:
        return f"{t.channels}/{t.kb:.0f}" if t.kb >= 10 else f"{t.channels}/{t.kb:.1f}"

    text = "V2 Table 3: largest tensor per size, channels/Kb (fp16)\n" + _table(
        ("size", "V1", "V1 paper", "V2", "V2 bottlenecks", "V2 paper", "V2 with expansions"),
        [(f"{r.size}x{r.size}", cell(r.v1), "{}/{}".format(*r.published_v1), cell(r.v2),
          cell(r.v2_bottlenecks), "{}/{}".format(*r.published_v2), cell(r.v2_all_ops))
         for r in result.rows])
    text += (f"\n\nV2 peak memory at {result.resolution}: max over operations of inputs + "
             "outputs (conv-BN-act fused), bottlenecks in t groups (t=1: unsplit)\n")
    text += _table(("t", "elements", "Kb fp16", "measured", "same logits", "where"),
                   [(p.t or "1 channel each", f"{p.bound:,}", f"{p.kb16:.0f}",
                     "-" if p.measured is None else f"{p.measured:,}",
                     "-" if p.same_logits is None else ("yes" if p.same_logits else "NO"), p.where)
                    for p in result.peaks])
    text += (f"\nmobilenets.profile (BN and ReLU6 as separate ops): "
             f"{result.profiler_peak_elements:,} elements at {result.profiler_peak_layer}")
    return result, text, []


def _manifold(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    result = paper.manifold()
    png = paper.plot_manifold(result, out / "manifold.png")
    text = (f"spiral of {result.n_points} points, {result.trials} random T per n, seed "
            f"{result.seed}\n") + _table(
        ("n", "error after linear fit", "recoverable", "expected 1-(n+1)/2^n"),
        [(r.dim, f"{r.error:.3f}", f"{r.recoverable:.3f}", f"{r.expected_recoverable:.3f}")
         for r in result.rows])
    return result, text, [png]


def _activations(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    result = paper.activations()
    png = paper.plot_activations(out / "activations.png")
    text = f"grid [{result.lo:g}, {result.hi:g}], {result.points:,} points\n" + _table(
        ("pair", "max |difference|", "at x"),
        [(d.pair, f"{d.max_abs_diff:.4f}", f"{d.at:+.3f}") for d in result.diffs])
    return result, text, [png]


def _last_stage(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    r = paper.last_stage()

    def layers(rows: list[tuple[str, int]]) -> str:
        return ", ".join(f"{name} {m / 1e6:.2f}" for name, m in rows)

    text = _table(
        ("MobileNetV3-Large", "MAdds", "params", "layers that differ (MAdds M)"),
        [("efficient last stage", f"{r.efficient_madds:,}", f"{r.efficient_params:,}",
          layers(r.efficient_tail)),
         ("original last stage", f"{r.original_madds:,}", f"{r.original_params:,}",
          layers(r.original_tail)),
         ("16-filter stem", f"{r.stem16_madds:,}", "", layers(r.stem16_head)),
         ("32-filter stem", f"{r.stem32_madds:,}", "", layers(r.stem32_head))])
    text += (f"\nefficient last stage saves {r.last_stage_saving / 1e6:.2f} M MAdds (paper: 30 M); "
             f"16-filter stem saves {r.stem_saving / 1e6:.2f} M (paper: 10 M)")
    return r, text, []


def _ablation(args: argparse.Namespace, out: Path) -> tuple[object, str, list[Path]]:
    rows = paper.ablation(out, data=args.data, epochs=args.epochs, seed=args.seed,
                          max_steps=args.max_steps, batch_size=args.batch_size)
    text = _table(("V2 projection", "best acc", "final acc"),
                  [(r.variant, f"{r.best_acc:.4f}", f"{r.final_acc:.4f}") for r in rows])
    return rows, text, []


RUNNERS: dict[str, Runner] = {
    "tables": _tables, "cost": _cost, "memory": _memory, "manifold": _manifold,
    "activations": _activations, "last-stage": _last_stage, "ablation": _ablation,
}
