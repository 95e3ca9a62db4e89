"""Probe: are the demo's ACAM-KD spatial masks spatial? Trains one student per mode on the demo, prints per-mask stats.

Run: DENSEKD_CACHE=~/.cache/densekd OMP_NUM_THREADS=1 python benchmarks/acam_collapse_probe.py  (~1-2 min)
"""
import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from pathlib import Path
import torch
from densekd import demo as D
from densekd.distiller import Pair
torch.set_num_threads(1)
for obj, norm, iters in (("adversarial", "square", 600), ("descent", "sum", 100)):
    cfg = D.DemoConfig(cache_dir=__import__("os").environ.get("DENSEKD_CACHE", "/tmp/densekd-cache"), eval_split="dev", student_iters=iters)
    cache = Path(cfg.cache_dir).expanduser()
    dp = dict(seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_dev=cfg.n_dev, canvas=cfg.canvas, scale=(16, 32))
    ds = D.make_digits_dataset(cache / f"digits-{D._hash(dp)}", **dp)
    train, dev = D._tensors(ds["train"]), D._tensors(ds["dev"])
    teacher, _, _ = D.get_teacher(cfg, train, dev, dev, dp, cache, lambda s: None)
    D._pairs = lambda c: [Pair("trunk", loss="acam_kd", weight=0.1, kwargs={"num_masks": 11, "mask_objective": obj, "mask_norm": norm})]
    D._seed_all(1000)
    r, dist = D.train_model(D.TinySegNet(16), train, dev, iters, cfg, 1000, teacher=teacher)
    mod = next(iter(dist.kd_losses.values()))
    dist(dev[0][:8], targets=dev[1][:8])
    sp, fused = mod.last_masks["spatial"], mod.last_masks["fused"]
    t = dist  # teacher feature spatial variation for reference
    print(obj, norm, iters, "miou", round(r.metric, 2))
    print("  spatial mask per-mask spatial std (mean over b):", [round(float(x), 4) for x in sp.flatten(2).std(-1).mean(0)])
    print("  spatial mask per-mask mean:", [round(float(x), 3) for x in sp.flatten(2).mean(-1).mean(0)])
    f = fused.flatten(2)
    print("  fused: spatial std / |mean| per channel, median:", float((f.std(-1) / (f.mean(-1).abs() + 1e-6)).median()))
    print("  spatial units norm:", float(mod.ascm.spatial_units.norm(dim=1).mean()), "q/k weight norm:", float(mod.fusion.q.weight.norm()), float(mod.fusion.k.weight.norm()))
