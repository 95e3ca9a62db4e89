"""SAMKD's Tables II (SFD / SLD / both) and III (distillation scales) on the detection demo's setting, from finished
runs: AP ± std over seeds, the gain over the plain student paired by seed, the full SAMKD minus each variant
(paired), and the paper's COCO numbers beside ours (GFL ResNeXt-101 → ResNet-50). Reads only ``metrics.json``;
trains nothing. The runs come from (val, 3 seeds; SAMKD at its dev-chosen weight 1)

    python benchmarks/detection_setting.py run "w05-pre-1000-wu100+samkd@1" --split val --seeds 3
    python benchmarks/detection_setting.py run "w05-pre-1000-wu100+samkd@1#sfd" --split val --seeds 3 \\
        --kwargs '{"samkd": {"use_logits": false}}'
    ... "#sld" {"use_features": false}; "#s1" {"scales": [1]}; "#s2" {"scales": [2]}; "#s4" {"scales": [4]}

    python benchmarks/samkd_tables.py runs/detection_setting/val

(``DENSEKD_BENCH_OUT`` sets detection_setting.py's output folder, ``runs/detection_setting`` by default.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from densekd.run_folder import METRICS_FILE
from densekd.tools.compare import fmt, markdown_table, mean_std, paired_gains

POINT = "w05-pre-1000-wu100+samkd@1"
#: (table, tag of the folder, row label, the paper's mAP)
ROWS = [
    ("II", "#sfd", "SFD only (features; `use_logits=False`)", 42.2),
    ("II", "#sld", "SLD only (logits; `use_features=False`)", 42.0),
    ("II, III", "", "SFD + SLD, scales 1, 2, 4 (SAMKD)", 42.3),
    ("III", "#s1", "scale 1 only (1×1)", 41.9),
    ("III", "#s2", "scale 2 only (2×2)", 41.9),
    ("III", "#s4", "scale 4 only (4×4)", 42.0),
]


def _runs(folder: Path) -> dict[str, list[dict]]:
    """{"baseline": [...], "samkd": [...]} of one point's runs folder (the one runs-det-* inside it)."""
    out: dict[str, list[dict]] = {}
    for d in sorted(folder.glob("runs-det-*/*/seed*")):
        f = d / METRICS_FILE
        if f.is_file():
            method = d.parent.name.split("-")[0]
            out.setdefault(method, []).append({"seed": int(d.name[4:]), **json.loads(f.read_text())})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0])
    full = _runs(root / POINT).get("samkd", [])
    rows = []
    for table, tag, label, paper in ROWS:
        runs = _runs(root / f"{POINT}{tag}")
        if "samkd" not in runs or "baseline" not in runs:
            rows.append([table, label, "not run", "—", "—", "—", f"{paper:.1f}"])
            continue
        seeds = {r["seed"] for r in runs["samkd"]}
        base = [r for r in runs["baseline"] if r["seed"] in seeds]
        g = paired_gains({"baseline": base, "v": runs["samkd"]}, "baseline", "AP", ["v"])[0]
        vs = "—"
        if tag and full:
            d = paired_gains({"v": runs["samkd"], "full": full}, "v", "AP", ["full"])[0]
            vs = f"{fmt(100 * d.mean, 100 * d.std, sign=True)} ({d.n})"
        rows.append([table, label, fmt(*mean_std([100 * r["AP"] for r in runs["samkd"]])[:2]), str(len(seeds)),
                     f"{fmt(100 * g.mean, 100 * g.std, sign=True)} {g.verdict()} "
                     f"({', '.join(f'{100 * v:+.2f}' for v in g.per_seed.values())})", vs, f"{paper:.1f}"])
    print(markdown_table(["SAMKD table", "variant", "our val AP (×100)", "seeds",
                          "gain vs plain (paired; > 2 std; per seed)", "SAMKD − this (paired; seeds)",
                          "paper mAP (GFL)"], rows, align=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
