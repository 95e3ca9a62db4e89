"""The detection demo's tables from finished runs: the paper's ACAM-KD ablations (Tables 8–10) and the comparison
of every method (SAMKD's Table I), each as AP ± std over seeds, the gain over the plain student paired by seed
(± std, per seed, > 2 std), and the papers' COCO numbers beside ours (ACAM-KD: RetinaNet R101 → R50, its Tables
8–10; SAMKD: FCOS R101 → R50, its Table I). Reads only what the runs wrote (``metrics.json``) in the run folders
of the demo's settings (``densekd.demo.detection.run_names``); trains nothing. The runs come from

    python -m densekd demo --task detection --seeds 3 --out runs/demo_val \\
        --methods baseline fitnet maskd acam_kd_teacher_fusion acam_kd acam_kd_spatial acam_kd_channel \\
        acam_kd_student_query acam_kd_paper samkd fgd mgd pkd dmkd freekd

    python benchmarks/detection_ablation_table.py runs/demo_val/runs-det-<hash>

A method with fewer finished seeds than the others is shown with its own n (and marked "not run" when it has none).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from densekd.run_folder import METRICS_FILE
from densekd.tools.compare import fmt, markdown_table, mean_std, paired_gains

#: ACAM-KD's Tables 8–10: (table, row label, the paper's COCO mAP with RetinaNet R101 → R50; plain student 37.4)
PAPER = {
    "baseline": ("—", "student (plain)", 37.4),
    "fitnet": ("10", "no mask (FitNet)", 37.4),
    "maskd": ("10", "fixed teacher mask (MasKD)", 39.8),
    "acam_kd_teacher_fusion": ("10", "adaptive teacher mask", 39.9),
    "acam_kd": ("8–10", "ACAM-KD (STCA-FF + spatial & channel, teacher query)", 41.2),
    "acam_kd_spatial": ("8", "spatial masks only", 40.9),
    "acam_kd_channel": ("8", "channel masks only", 40.4),
    "acam_kd_student_query": ("9", "student query", 41.0),
    "acam_kd_paper": ("—", "ACAM-KD, literal mask objective (acam_kd_paper)", None),
}


#: the comparison (SAMKD's Table I, FCOS R101 → R50: plain 35.3; PKD and ACAM-KD are not in it)
COMPARE = {
    "baseline": ("I", "student (plain)", 35.3),
    "fitnet": ("—", "FitNet", None),
    "fgd": ("I", "FGD", 38.0),
    "mgd": ("I", "MGD", 38.2),
    "freekd": ("I", "FreeKD", 38.3),
    "dmkd": ("I", "DMKD", 38.5),
    "pkd": ("—", "PKD", None),
    "maskd": ("—", "MasKD", None),
    "samkd": ("I", "SAMKD", 38.8),
    "acam_kd": ("—", "ACAM-KD", None),
}


def table(root: Path, paper_rows: dict, paper_name: str) -> str:
    from densekd.demo.detection import DemoConfig, run_names

    folders = run_names(DemoConfig(methods=tuple(paper_rows)))
    runs: dict[str, list[dict]] = {}
    for m in paper_rows:
        for d in sorted((root / folders[m]).glob("seed*")):
            f = d / METRICS_FILE
            if f.is_file():
                runs.setdefault(m, []).append({"seed": int(d.name[4:]), **json.loads(f.read_text())})
    gains = {g.method: g for g in paired_gains(runs, "baseline", "AP", list(runs))}
    # ACAM-KD − this row, paired by seed (the papers' claim is ACAM-KD above its controls)
    versus = ({m: paired_gains(runs, m, "AP", ["acam_kd"])[0] for m in runs if m not in ("acam_kd", "baseline")}
              if "acam_kd" in runs else {})
    base = paper_rows["baseline"][2]
    rows = []
    for m, (table, label, paper) in paper_rows.items():
        if m not in runs:
            rows.append([table, label, m, "not run", "—", "—", "—", "—",
                         "—" if paper is None else f"{paper:.1f}", "—" if paper is None or m == "baseline"
                         else f"{paper - base:+.1f}"])
            continue
        ap = mean_std([100 * r["AP"] for r in runs[m]])[:2]
        g = gains.get(m)
        rows.append([table, label, m, fmt(*ap), str(len(runs[m])),
                     "—" if g is None else fmt(100 * g.mean, 100 * g.std, sign=True),
                     "—" if g is None else f"{g.verdict()} ({', '.join(f'{100 * v:+.2f}' for v in g.per_seed.values())})",
                     "—" if m not in versus else fmt(100 * versus[m].mean, 100 * versus[m].std, sign=True)
                     + f" ({versus[m].n})",
                     "—" if paper is None else f"{paper:.1f}",
                     "—" if paper is None or m == "baseline" else f"{paper - base:+.1f}"])
    return markdown_table([f"{paper_name} table", "row", "densekd method", "our val AP (×100)", "seeds",
                           "our gain vs plain (paired)", "> 2 std (per seed)", "ACAM-KD − this (paired; seeds)", "paper mAP",
                           "paper gain"], rows,
                          align=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0])
    print("ACAM-KD's ablations (its Tables 8–10; paper: RetinaNet R101 → R50 on COCO)\n")
    print(table(root, PAPER, "ACAM-KD"))
    print("\nEvery method (SAMKD's Table I; paper: FCOS R101 → R50 on COCO)\n")
    print(table(root, COMPARE, "SAMKD"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
