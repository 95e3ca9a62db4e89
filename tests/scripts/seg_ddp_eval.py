"""Run by tests/test_seg_task.py under torchrun (2 processes, gloo): distributed SegmentationTask.evaluate."""
import json
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from densekd.tasks.segmentation import SegDataConfig, SegModelConfig, SegmentationTask, ShardSampler


def main(root: str, ckpt: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    task = SegmentationTask()
    tiny = {"layers": [1, 1, 1, 1], "decoder_channels": 16, "num_classes": 19, "checkpoint": ckpt}
    model = task.build_model(SegModelConfig.from_dict({"student": {"arch": "pspnet", "backbone": "resnet18", **tiny}}), "student")
    ds = task.build_dataset(SegDataConfig.from_dict({"format": "cityscapes", "root": root}), "val")
    # The engine's usual padded DistributedSampler: evaluate must re-shard without duplicates.
    loader = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, shuffle=False), collate_fn=task.collate)
    metrics = task.evaluate(model, loader, torch.device("cpu"), None)
    metrics["n_local"] = len(ShardSampler(len(ds), dist.get_world_size(), rank))
    with open(f"{out}/metrics_rank{rank}.json", "w") as f:
        json.dump(metrics, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
