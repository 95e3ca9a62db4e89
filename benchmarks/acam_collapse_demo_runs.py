"""Demo students for benchmarks/acam_mask_collapse.md: one student per (setting, seed), one JSON line each.

Usage: OMP_NUM_THREADS=1 python benchmarks/acam_collapse_demo_runs.py SPLIT SEEDS NAME[@field=value,...] ...
  SPLIT dev|val; SEEDS e.g. 1000,1001,1002 (the demo's seeds); NAME one of SETTINGS below or "plain";
  "@feature_weight=0.3" overrides a DemoConfig field. Env: DENSEKD_CACHE (teacher/data cache), OUT (jsonl folder).
Same data, teacher, schedule and seeds as ``densekd demo``; the trunk feature is distilled (weight 0.1).
"""
import json, os, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pathlib import Path
import torch
from densekd import demo as D
from densekd.distiller import Pair
torch.set_num_threads(1)
split, seeds, names = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3:]
NM = D.NUM_SEG_CLASSES
def acam(**kw):
    return lambda cfg: [Pair("trunk", loss="acam_kd", weight=cfg.feature_weight, kwargs={"num_masks": NM, **kw})]
_orig_stats = D._distiller_mask_stats
D._distiller_mask_stats = lambda d: {} if not all(hasattr(m, "mask_statistics") for m in d.kd_losses.values()) else _orig_stats(d)
SETTINGS = {
    "default": acam(),
    "adv_sum": acam(mask_objective="adversarial"),
    "adv_sq": acam(mask_objective="adversarial", mask_norm="square"),
    "det_sum": acam(mask_objective="detached"),
    "desc_sq": acam(mask_norm="square"),
    "det_sq": acam(mask_objective="detached", mask_norm="square"),
    "adv_sq_z": acam(mask_objective="adversarial", mask_norm="square", z_norm="spatial"),
    "fitnet": lambda cfg: [Pair("trunk", loss="fitnet", weight=cfg.feature_weight)],
    "fitnet1": lambda cfg: [Pair("trunk", loss="fitnet", weight=1.0)],
    "hinton": lambda cfg: [Pair("classifier", loss="hinton_kd", weight=1.0)],
    "hinton_T4": lambda cfg: [Pair("classifier", loss="hinton_kd", weight=1.0, kwargs={"temperature": 4.0})],
}
cfg0 = D.DemoConfig(cache_dir=os.environ.get("DENSEKD_CACHE", "~/.cache/densekd"), eval_split=split, threads=1)
cache = Path(cfg0.cache_dir).expanduser()
dparams = dict(seed=cfg0.data_seed, n_train=cfg0.n_train, n_val=cfg0.n_val, n_dev=cfg0.n_dev, canvas=cfg0.canvas,
               scale=(cfg0.canvas // 4, cfg0.canvas // 2))
ds = D.make_digits_dataset(cache / f"digits-{D._hash(dparams)}", **dparams)
train, evald = D._tensors(ds["train"]), D._tensors(ds[split])
teacher, tr, _ = D.get_teacher(cfg0, train, D._tensors(ds["dev"]), evald, dparams, cache, print)
print(f"teacher {split} {tr.metric:.2f}", flush=True)
res_path = Path(os.environ.get("OUT", ".")) / f"acam_collapse_results_{split}.jsonl"
for full in names:
    name, _, ov = full.partition("@")
    kw = {}
    for item in filter(None, ov.split(",")):
        k, v = item.split("=")
        kw[k] = type(getattr(cfg0, k))(v)
    cfg = D.DemoConfig(**{**cfg0.__dict__, **kw})
    for seed in seeds:
        t0 = time.time()
        D._seed_all(seed)
        if name == "plain":
            r, dist = D.train_model(D.TinySegNet(cfg.student_width), train, evald, cfg.student_iters, cfg, seed)
        else:
            D._pairs = SETTINGS[name]
            r, dist = D.train_model(D.TinySegNet(cfg.student_width), train, evald, cfg.student_iters, cfg, seed,
                                    teacher=teacher)
        stats = r.mask_stats[-1][1] if r.mask_stats else {}
        line = {"name": full, "seed": seed, "miou": r.metric, "s": round(time.time() - t0),
                "curve": [c[2] for c in r.curve],
                "mask": {k: round(v, 3) for k, v in stats.items() if k.endswith("mean") or k.endswith("dice")}}
        print(json.dumps(line), flush=True)
        with res_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
