"""The rank report (`{work}/ranks/rank_{r}.json`, docs/training.md): at the end of a completed training run
each process writes its view of the process group, an all_reduce over it and a digest of its trained weights, so
that a run can show its processes formed one group and ended with the same weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

RANKS_DIR = "ranks"


def _weights_digest(model) -> str:
    """sha256 over the trained parameters (name, dtype, bytes): equal on every rank when the replicas agree."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            t = p.detach().float().cpu().contiguous()
            h.update(name.encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def write_rank_report(accelerator, work: Path, model) -> dict:
    """{work}/ranks/rank_{r}.json: this process's view of the group, an all_reduce over it, and a digest of its
    trained weights, so that a run can show its processes formed one group and ended with the same weights;
    logged too. Every process calls it (the all_reduce is collective)."""
    import torch

    value = torch.tensor([float(accelerator.process_index + 1)], device=accelerator.device)
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(value)
        backend = dist.get_backend()
    else:
        backend = None
    report = {"rank": accelerator.process_index, "local_rank": accelerator.local_process_index,
              "world_size": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
              "backend": backend, "all_reduce_sum_of_rank_plus_1": float(value.item()),
              "weights_sha256": _weights_digest(model), "device": str(accelerator.device)}
    folder = work / RANKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank_{accelerator.process_index}.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("process %d: world size %d, all_reduce %.0f, weights %s", report["rank"], report["world_size"],
             report["all_reduce_sum_of_rank_plus_1"], report["weights_sha256"][:16])
    return report
