"""Training checkpoints: `{work}/checkpoints/step_{N}`, written by `accelerator.save_state` via a `.partial`
folder renamed when complete, with `progress.json` (the step, micro-batches, the run's fingerprint) beside the
states. Without DeepSpeed a checkpoint holds the trained weights only (`trainable.safetensors`, never the frozen
decoder); under DeepSpeed its frozen parameters are left out. The training loop (reg2rg.train) saves, resumes
from the latest one and removes those of a run with other settings.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from reg2rg.errors import InputError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "progress.json"
TRAINABLE_FILE = "trainable.safetensors"


def uses_deepspeed() -> bool:
    """True under `accelerate launch` with DeepSpeed (its checkpoints are DeepSpeed's own; the training loop
    leaves gradient clipping to DeepSpeed too)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def checkpoint_steps(work_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints under {work}/checkpoints, oldest first."""
    folder = Path(work_dir) / CHECKPOINTS_DIR
    out = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and (p / PROGRESS_FILE).is_file():
                out.append((int(p.name[5:]), p))
    return sorted(out)


def latest_checkpoint(work_dir) -> Path | None:
    steps = checkpoint_steps(work_dir)
    return steps[-1][1] if steps else None


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def register_checkpoint_hooks(accelerator, unwrapped) -> None:
    """Without DeepSpeed, checkpoints hold the trained weights only (never the frozen 7B decoder)."""
    from safetensors.torch import load_file, save_file

    names = _trainable_names(unwrapped)

    def save_hook(models, weights, output_dir):
        if weights:
            state = unwrapped.state_dict()
            save_file({k: state[k].detach().cpu().contiguous() for k in sorted(names)},
                      str(Path(output_dir) / TRAINABLE_FILE))
            weights.clear()

    def load_hook(models, input_dir):
        if models:
            state = load_file(str(Path(input_dir) / TRAINABLE_FILE))
            if set(state) != names:
                raise InputError(input_dir, "checkpoint weights do not match the model's trained parameters")
            unwrapped.load_state_dict(state, strict=False)
            models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, work: Path, step: int, progress: dict, keep: int) -> None:
    folder = work / CHECKPOINTS_DIR
    final = folder / f"step_{step}"
    partial = folder / f"step_{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if uses_deepspeed() else {}
    accelerator.save_state(str(partial), **kwargs)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for _, old in checkpoint_steps(work)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", final)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: Path) -> dict:
    kwargs = {"load_module_strict": False} if uses_deepspeed() else {}
    accelerator.load_state(str(path), **kwargs)
    return json.loads((path / PROGRESS_FILE).read_text())
