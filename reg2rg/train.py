"""Training: `accelerate launch [--config_file config/accelerate/...] -m reg2rg.train ...`.

One loop for every setting, through Accelerate: one CPU process (config/accelerate/cpu.yaml), or one process
per GPU with DeepSpeed ZeRO-2 (config/accelerate/zero2.yaml + config/deepspeed/zero2.json; ZeRO-2 also runs
on the CPU, over gloo). See docs/training.md.

Data. The training scans come from a map-style dataset whose items are `reg2rg.dataset.Reg2RGDataset` items
(`global` [1, Z, Y, X], `texture`/`geometry` [R, 1, Z, Y, X], `regions`, `region_texts`, `case_id`); any
dataset with those keys plugs in (`train(..., dataset=...)`). A scan with no usable region never reaches the
loop (the dataset leaves it out, and `train` refuses an item without one), so the mask encoder is used by every
batch (DDP and ZeRO need every trained parameter to get a gradient).

Order. The data stream is the epochs one after another: epoch e is the permutation of the scans drawn from
(seed, e); it is cut into micro-batches of `per_device_batch_size` per process (the last one of an epoch filled
from its start) and an optimizer step takes `gradient_accumulation` consecutive micro-batches. Micro-batch m
draws its region order (the prompt's region numbering, so the RRA target) from (seed, m, process): a new
order at every step, the same one when a run resumes. Batches are padded to their longest sample (the batching
itself, `make_batch` and `TrainCollate`, is in reg2rg.dataset).

Checkpoints. Every `checkpoint_every` steps (and at the end) `accelerator.save_state` writes
`{work}/checkpoints/step_{N}` (trained weights only, optimizer, scheduler, RNG states, the step) via a
`.partial` folder renamed when complete; a restarted run loads the latest one and continues with the same
data order, region orders and random state: on the CPU it ends with the same weights as a run that was never
stopped. `{work}/run.json` holds a fingerprint of the run's settings and data; checkpoints of other settings
are removed rather than resumed. Writing and reading them is reg2rg.checkpoints; the frozen-ViT feature cache
(`cache_vit_features`) is reg2rg.vit_features.

Output (main process, at the end only): `reg2rg.model.save_trained` (adapter/, modules.safetensors,
tokenizer/, reg2rg_config.json, llm_base/ for a randomly initialised decoder) plus `run_config.json` (model,
training, data set, processes, versions, git commit) and `train_log.jsonl` (step, epoch, loss, lr,
samples_per_s); written to `{out}.partial` and renamed, so the folder exists only when complete.
TensorBoard logs go to `{work}/tensorboard/`; every process of a completed run writes
`{work}/ranks/rank_{r}.json` (reg2rg.rank_report).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from reg2rg.checkpoints import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    load_checkpoint,
    register_checkpoint_hooks,
    save_checkpoint,
    uses_deepspeed,
)
from reg2rg.constants import REGIONS, RUN_CONFIG_FILE
from reg2rg.errors import ConfigError, InputError
from reg2rg.rank_report import RANKS_DIR, write_rank_report
from reg2rg.vit_features import VIT_FEATURES_DIR, VitFeatureDataset, cache_vit_features
from reg2rg.workflow_config import read_workflow_config

log = logging.getLogger("reg2rg.train")  # the same name under `python -m`

RUN_FILE = "run.json"
LOG_FILE = "train_log.jsonl"
SCHEDULERS = ("constant_with_warmup", "constant", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_PAIRINGS = ("own", "shuffled", "reshuffled")
# Settings that change the result; the others (checkpointing, logging, workers, resources) may change
# between a run and its resumption.
_RESULT_KEYS = ("epochs", "max_steps", "per_device_batch_size", "effective_batch_size", "learning_rate",
                "weight_decay", "adam_betas", "adam_eps", "lr_scheduler", "warmup_steps", "max_grad_norm",
                "mixed_precision", "gradient_checkpointing", "seed")


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TrainingConfig:
    """The `training.<preset>` section of config/config.yaml (defaults: the paper's run)."""

    epochs: int = 6
    max_steps: int | None = None  # optimizer steps; None: epochs decide
    per_device_batch_size: int = 1
    effective_batch_size: int = 16  # per_device_batch_size x gradient accumulation x processes
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 20
    max_grad_norm: float | None = 1.0  # None or 0: no clipping
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool | None = None  # None: the model preset's setting
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 4
    # Batches each DataLoader worker loads ahead (torch's prefetch_factor). Every loaded batch waits in shared
    # memory (/dev/shm): num_workers x prefetch_factor x per_device_batch_size samples per process, about 350 MB
    # each at the paper's size; training stops at the start when /dev/shm has less (check_shared_memory).
    prefetch_factor: int = 2
    # Keep loaded scans in memory (per DataLoader worker) up to this many MB: for small data sets such as the
    # demo, whose every epoch would otherwise resize the same scans again. 0: off.
    memory_cache_mb: int = 0
    # The ViT is frozen and in eval mode, so its outputs for a scan's global input and region crops never
    # change: compute them once (fp16, `{work}/vit_features/`) and train the Perceiver and the rest on them,
    # without running the ViT or making the global and texture inputs again (see docs/performance.md).
    cache_vit_features: bool = False
    # "own": each training scan with its own report. Two controls for the findings coming from the image:
    # "shuffled": each scan's image with another training scan's report, region texts and labels for the whole
    # run (reg2rg.manifest.paired_with_other_reports, seeded by `seed`); a model can memorise these wrong pairs
    # and then writes findings at their rates for the wrong scans (chance level). Applied by this module's CLI
    # (_main), which builds the training manifest; train() takes the dataset as given.
    # "reshuffled": each scan's image with another training scan's region texts, a new pairing every epoch
    # (EpochPairing, applied by train() to the stream): no image keeps a report to memorise, so the model learns
    # the reports' language and frequencies only (the ablation table's `shuffled` row).
    report_pairing: str = "own"
    resources: dict[str, Any] = field(default_factory=dict)  # read by the workflow (gpu, mem_mb, runtime)

    def __post_init__(self):
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        for name in ("epochs", "per_device_batch_size", "effective_batch_size", "checkpoint_every", "log_every",
                     "prefetch_factor"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"training.{name}: must be at least 1, got {getattr(self, name)!r}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ConfigError(f"training.max_steps: must be null or at least 1, got {self.max_steps!r}")
        if self.lr_scheduler not in SCHEDULERS:
            raise ConfigError(f"training.lr_scheduler: {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"training.mixed_precision: {self.mixed_precision!r} is not one of "
                              f"{', '.join(MIXED_PRECISION)}")
        if self.report_pairing not in REPORT_PAIRINGS:
            raise ConfigError(f"training.report_pairing: {self.report_pairing!r} is not one of "
                              f"{', '.join(REPORT_PAIRINGS)}")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"training.adam_betas: expected two numbers, got {self.adam_betas!r}")
        if self.effective_batch_size % self.per_device_batch_size:
            raise ConfigError(f"training.effective_batch_size {self.effective_batch_size} is not a multiple of "
                              f"per_device_batch_size {self.per_device_batch_size}")

    def gradient_accumulation(self, processes: int) -> int:
        """Micro-batches per optimizer step so that the effective batch holds on `processes` processes."""
        per_step = self.per_device_batch_size * processes
        if self.effective_batch_size % per_step:
            raise ConfigError(
                f"training.effective_batch_size {self.effective_batch_size} is not a multiple of "
                f"per_device_batch_size {self.per_device_batch_size} x {processes} processes: change the number "
                "of GPUs or the batch settings")
        return self.effective_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainingConfig":
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"training: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"training: {err}") from err


# --------------------------------------------------------------------------------------------------------------
# The tiny tokenizer (its own workflow step: results/{dataset}/tokenizer/)
# --------------------------------------------------------------------------------------------------------------

def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    value = str(value).strip()
    return value or None


def training_texts(manifest_df) -> list[str]:
    """The texts a tokenizer may learn from: the region texts and whole reports of the included training
    scans (never a test report)."""
    df = manifest_df[(manifest_df["status"] == "included") & (manifest_df["split"] == "train")]
    texts = []
    for row in df.to_dict("records"):
        texts += [t for t in (_text(v) for v in list(row["region_texts"])) if t]
        if _text(row.get("report")):
            texts.append(_text(row["report"]))
    return texts


def train_tokenizer(manifest_path, vocab_size: int, out_dir):
    """Train the tiny byte-level BPE on a training manifest's reports, into `out_dir`."""
    from reg2rg.manifest import read_manifest
    from reg2rg.model import train_tiny_tokenizer

    texts = training_texts(read_manifest(manifest_path))
    if not texts:
        raise InputError(manifest_path, "no included training scan with a report: nothing to train a tokenizer on")
    log.info("training a %d-token tokenizer on %d texts of %s", vocab_size, len(texts), manifest_path)
    return train_tiny_tokenizer(texts, vocab_size, out_dir)


def resolve_tokenizer(model_config, tokenizer_dir=None):
    """The tokenizer of a run: `tokenizer_dir` (the workflow's trained one), else the config's tokenizer_path,
    else the LLM folder's."""
    from reg2rg.model import load_tokenizer

    path = tokenizer_dir or model_config.tokenizer_path or model_config.llm.path
    if path is None:
        raise ConfigError("no tokenizer: this preset has neither tokenizer_path nor llm.path; train one with the "
                          "workflow's tokenizer rule (reg2rg.train.train_tokenizer) and pass --tokenizer")
    return load_tokenizer(path)


# --------------------------------------------------------------------------------------------------------------
# The training stream (sampler, in-memory cache; the frozen-ViT features are reg2rg.vit_features)
# --------------------------------------------------------------------------------------------------------------

class StreamSampler:
    """Batch sampler over the epochs one after another, for one process: yields lists of (m, index) with m the
    micro-batch number of the stream, starting at micro-batch `start`.

    Epoch e: the permutation of range(n) from numpy's Generator seeded (seed, e), extended from its start to a
    multiple of batch_size x processes; micro-batch b of the epoch on process p holds the positions
    [(b * processes + p) * batch_size, ... + batch_size)."""

    def __init__(self, n: int, batch_size: int, processes: int, rank: int, seed: int, start: int = 0,
                 stop: int | None = None):
        if n < 1:
            raise ValueError("StreamSampler: no sample to draw from")
        self.n, self.batch_size, self.processes, self.rank = n, batch_size, processes, rank
        self.seed, self.start, self.stop = seed, start, stop
        self.per_epoch = math.ceil(n / (batch_size * processes))

    def epoch_order(self, epoch: int) -> list[int]:
        import numpy as np

        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()
        total = self.per_epoch * self.batch_size * self.processes
        return [perm[i % self.n] for i in range(total)]

    def batch(self, m: int) -> list[int]:
        epoch, b = divmod(m, self.per_epoch)
        order = self.epoch_order(epoch)
        first = (b * self.processes + self.rank) * self.batch_size
        return order[first:first + self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        epoch, cached = None, None
        while self.stop is None or m < self.stop:
            e, b = divmod(m, self.per_epoch)
            if e != epoch:
                epoch, cached = e, self.epoch_order(e)
            first = (b * self.processes + self.rank) * self.batch_size
            yield [(m, i) for i in cached[first:first + self.batch_size]]
            m += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless StreamSampler has no length")
        return max(0, self.stop - self.start)


class MemoryCache:
    """Dataset wrapper keeping the items it has loaded, up to `max_mb` of tensors (items must not be changed in
    place by their users; make_batch never does)."""

    def __init__(self, dataset, max_mb: int):
        self.dataset, self.max_bytes = dataset, int(max_mb) * 2**20
        self.items: dict[int, dict] = {}
        self.bytes = 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.items.get(i)
        if item is None:
            item = self.dataset[i]
            size = sum(v.numel() * v.element_size() for v in item.values() if hasattr(v, "element_size"))
            if self.bytes + size <= self.max_bytes:
                self.items[i] = item
                self.bytes += size
        return item


class EpochPairing:
    """The `reshuffled` report pairing: in epoch e, scan i's image gets the region texts of scan donor(e, i),
    a seeded random derangement of the training scans drawn anew every epoch (reg2rg.manifest.derangement,
    seeded (seed, e)). Unlike a fixed pairing ("shuffled"), no image keeps one (wrong) report that a model could
    memorise: across the epochs every image meets many scans' reports, so its text carries nothing about it.

    The item keeps its own regions (image and masks); a region the donor has no text for takes that region's
    text from another scan that has one (seeded by (seed, e, i, region)). `texts[j]`: scan j's texts per REGIONS
    index (None: none), as Reg2RGDataset's samples hold them; `per_epoch`: the stream's micro-batches per epoch."""

    def __init__(self, texts: list[list[str | None]], per_epoch: int, seed: int):
        if len(texts) < 2:
            raise ConfigError(f"report_pairing reshuffled: needs at least two training scans, got {len(texts)}")
        self.texts, self.per_epoch, self.seed = [list(t) for t in texts], int(per_epoch), int(seed)
        # per region, the scans with a text for it (the fallback donors), made once
        self.having = [[j for j, t in enumerate(self.texts) if t[r] is not None] for r in range(len(REGIONS))]
        for r, having in enumerate(self.having):
            if len(having) == 1:
                raise ConfigError(f"report_pairing reshuffled: only one training scan (number {having[0]}) has a "
                                  f"text for the {REGIONS[r]}: no other scan can give it one")
        self._epoch, self._donors = None, None  # the current epoch's derangement, drawn once per epoch

    def donors(self, epoch: int) -> list[int]:
        import numpy as np

        from reg2rg.manifest import derangement

        if epoch != self._epoch:
            self._epoch = epoch
            self._donors = derangement(len(self.texts), np.random.default_rng([self.seed, epoch])).tolist()
        return self._donors

    def __call__(self, m: int, i: int, item: dict) -> dict:
        import numpy as np

        epoch = m // self.per_epoch
        donor = self.donors(epoch)[i]
        texts = []
        for r in item["regions"]:
            text = self.texts[donor][r]
            if text is None:
                others = [j for j in self.having[r] if j != i]
                text = self.texts[others[int(np.random.default_rng([self.seed, epoch, i, r]).integers(len(others)))]][r]
            texts.append(text)
        return {**item, "region_texts": texts, "report": None}


class _Keyed(object):
    """Dataset wrapper: item (m, i) -> (m, dataset[i]), re-paired by `pairing(m, i, item)` when given."""

    def __init__(self, dataset, pairing: EpochPairing | None = None):
        self.dataset, self.pairing = dataset, pairing

    def __getitem__(self, key):
        m, i = key
        item = self.dataset[i]
        return m, (item if self.pairing is None else self.pairing(m, i, item))

    def __len__(self):
        return len(self.dataset)


# --------------------------------------------------------------------------------------------------------------
# Run bookkeeping
# --------------------------------------------------------------------------------------------------------------

def _sha256_json(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> dict:
    """{"commit", "dirty"} of the repository holding this package (None values outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=30).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("reg2rg", "torch", "transformers", "peft", "accelerate", "deepspeed", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


SHM_PATH = "/dev/shm"


def sample_bytes(model_config, training: TrainingConfig, regions: int = len(REGIONS)) -> int:
    """Bytes of one training sample's tensors as a DataLoader worker hands them over (float32 volumes at the
    model's input size: the global volume, `regions` texture crops, `regions` masks; with cache_vit_features
    the fp16 ViT features instead of the global and texture volumes)."""
    volume = 4 * math.prod(model_config.input_size)
    images = int(model_config.use_global) + (regions if model_config.use_texture else 0)
    if training.cache_vit_features:
        grid = math.prod(s // p for s, p in zip(model_config.input_size, model_config.vit.patch_size))
        per_image = 2 * grid * model_config.vit.dim
    else:
        per_image = volume
    return images * per_image + (regions * volume if model_config.use_geometry else 0)


def shared_memory_needed(model_config, training: TrainingConfig, processes: int = 1) -> int:
    """Bytes of /dev/shm the training loaders of `processes` processes on one node hold at most: each worker's
    prefetched batches (0 without workers: the main process loads, nothing is shared)."""
    if training.num_workers == 0:
        return 0
    return (processes * training.num_workers * training.prefetch_factor * training.per_device_batch_size
            * sample_bytes(model_config, training))


def check_shared_memory(model_config, training: TrainingConfig, processes: int = 1, *,
                        free_bytes: int | None = None, path=SHM_PATH) -> int:
    """ConfigError when the loaders would need more shared memory than `path` has free (`free_bytes`: that free
    space, else read from the file system); returns the bytes needed. A missing `path` (not Linux) is no check."""
    need = shared_memory_needed(model_config, training, processes)
    if need == 0:
        return 0
    if free_bytes is None:
        if not Path(path).is_dir():
            log.warning("%s not found: shared memory for the loader workers not checked", path)
            return need
        free_bytes = shutil.disk_usage(path).free
    gb = 1e9
    log.info("loader shared memory: %.1f GB needed, %.1f GB free in %s", need / gb, free_bytes / gb, path)
    if need > free_bytes:
        per = sample_bytes(model_config, training) / 1e6
        raise ConfigError(
            f"{path}: {free_bytes / gb:.1f} GB free, but the training loaders need up to {need / gb:.1f} GB of "
            f"shared memory ({processes} process(es) x num_workers {training.num_workers} x prefetch_factor "
            f"{training.prefetch_factor} x per_device_batch_size {training.per_device_batch_size} x {per:.0f} MB "
            "per sample); they would fail with a bus error mid-run. Give the job more shared memory (docker/podman "
            "--shm-size, a larger /dev/shm tmpfs on the node) or lower training.num_workers or "
            "training.prefetch_factor")
    return need


def run_fingerprint(model_config, training: TrainingConfig, case_ids: list[str], tokenizer, processes: int) -> str:
    """The run's identity: a hash of what decides its result (the model config, the training settings that
    change the result, the training scans, the tokenizer's vocabulary, the number of processes). Kept in
    `{work}/run.json` and run_config.json; a run with another one does not resume this one's checkpoints."""
    vocab = sorted(tokenizer.get_vocab().items())
    result = {k: training.to_dict()[k] for k in _RESULT_KEYS}
    if training.report_pairing != "own":  # a control's pairing (absent for "own": older runs keep their identity)
        result["report_pairing"] = training.report_pairing
    return _sha256_json({
        "model": model_config.to_dict(),
        "training": result,
        "cases": list(case_ids),
        "tokenizer": _sha256_json(vocab),
        "processes": processes,
    })


def _prepare_work_dir(work: Path, fingerprint: str, is_main: bool) -> None:
    """Keep checkpoints of this run; remove those of a run with other settings or data."""
    run_file = work / RUN_FILE
    if not is_main:
        return
    work.mkdir(parents=True, exist_ok=True)
    old = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    if old != fingerprint:
        stale = work / CHECKPOINTS_DIR
        if stale.exists() and any(stale.iterdir()):
            log.warning("%s: checkpoints of a run with other settings or data: removed, training starts afresh",
                        stale)
        shutil.rmtree(stale, ignore_errors=True)
        (work / LOG_FILE).unlink(missing_ok=True)
        shutil.rmtree(work / RANKS_DIR, ignore_errors=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


# --------------------------------------------------------------------------------------------------------------
# Accelerate and DeepSpeed
# --------------------------------------------------------------------------------------------------------------

def make_accelerator(training: TrainingConfig, work: Path, accumulation: int):
    """The run's Accelerator: mixed precision, gradient accumulation (stepped by the loop), TensorBoard under
    `work`; under DeepSpeed on the CPU, the process group on DeepSpeed's CPU backend."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, ProjectConfiguration

    handlers = []
    if uses_deepspeed() and not torch.cuda.is_available():
        # DeepSpeed on the CPU: without a backend Accelerate would see a 1-process run (it only knows the GPU
        # backends); DeepSpeed's CPU accelerator names its own (gloo, or ccl with oneCCL installed).
        from deepspeed.accelerator import get_accelerator

        handlers.append(InitProcessGroupKwargs(backend=get_accelerator().communication_backend_name()))
    return Accelerator(
        mixed_precision=training.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accumulation, sync_with_dataloader=False,
                                                                adjust_scheduler=False),
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step here: warm-up counts updates
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(work), logging_dir=str(work / "tensorboard")),
        kwargs_handlers=handlers,
    )


def fill_deepspeed_config(accelerator, training: TrainingConfig, accumulation: int) -> None:
    """The batch and clipping values of the DeepSpeed config come from the training settings ("auto" in
    config/deepspeed/zero2.json); explicit values there must agree with them."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    want = {
        "train_micro_batch_size_per_gpu": training.per_device_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": training.per_device_batch_size * accumulation * accelerator.num_processes,
        "gradient_clipping": float(training.max_grad_norm or 0.0),
    }
    for key, value in want.items():
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = value
        elif float(have) != float(value):
            raise ConfigError(f"DeepSpeed config: {key} is {have}, the training settings give {value}: set it to "
                              "\"auto\" in config/deepspeed/zero2.json")
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if (ds.get("zero_optimization") or {}).get(key) == "auto":
            raise ConfigError(f"DeepSpeed config: zero_optimization.{key} is \"auto\", which Accelerate derives from "
                              "model.config.hidden_size; Reg2RG's config has none: give a number")


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------

def total_steps(training: TrainingConfig, n_samples: int, processes: int, accumulation: int) -> int:
    if training.max_steps:
        return int(training.max_steps)
    per_epoch = math.ceil(n_samples / (training.per_device_batch_size * processes))
    return max(1, (training.epochs * per_epoch) // accumulation)


def train(model_config, training: TrainingConfig, *, dataset, tokenizer, work_dir, out_dir,
          run_info: dict | None = None, max_steps_this_run: int | None = None) -> Path | None:
    """Train a Reg2RG model on `dataset` (items as reg2rg.dataset.Reg2RGDataset's) and write it to `out_dir`.

    Resumes from the latest checkpoint in `work_dir` when one of the same run exists. `max_steps_this_run`
    stops the run after that many optimizer steps, as a killed run would (no checkpoint beyond the regular
    ones, no output): for tests and for splitting a run over several jobs. Returns `out_dir`, or None when
    stopped early. Every process calls this; the output is written by the main process.
    """
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from reg2rg.dataset import TrainCollate, case_ids, model_inputs
    from reg2rg.model import build_model

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers tokenize
    work, out = Path(work_dir), Path(out_dir)
    if training.gradient_checkpointing is not None:
        model_config = model_config.replace(gradient_checkpointing=bool(training.gradient_checkpointing))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = training.gradient_accumulation(processes)
    accelerator = make_accelerator(training, work, accumulation)
    if accelerator.num_processes != processes:
        raise ConfigError(f"WORLD_SIZE says {processes} processes, Accelerate runs {accelerator.num_processes}")
    rank, is_main = accelerator.process_index, accelerator.is_main_process
    n = len(dataset)
    if n == 0:
        raise InputError(getattr(dataset, "cache_dir", "dataset"), "no training scan with a usable region")
    steps = total_steps(training, n, processes, accumulation)
    # Before the model is built (minutes for the 7B): the loaders' shared memory, for this node's processes.
    check_shared_memory(model_config, training, int(os.environ.get("LOCAL_WORLD_SIZE", processes)))
    fingerprint = run_fingerprint(model_config, training, case_ids(dataset), tokenizer, processes)
    _prepare_work_dir(work, fingerprint, is_main)
    accelerator.wait_for_everyone()

    set_seed(training.seed)
    model = build_model(model_config, tokenizer)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, betas=training.adam_betas,
                                  eps=training.adam_eps, weight_decay=training.weight_decay)
    scheduler = get_scheduler(training.lr_scheduler, optimizer, num_warmup_steps=training.warmup_steps,
                              num_training_steps=steps)
    fill_deepspeed_config(accelerator, training, accumulation)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    if not uses_deepspeed():
        register_checkpoint_hooks(accelerator, unwrapped)
    n_trained = sum(p.numel() for p in params)
    log.info("process %d of %d (%s, %s): %d scans, %d steps of %d samples (%d per device x %d accumulation x %d "
             "processes), %d trained parameters", rank, processes, accelerator.distributed_type, accelerator.device,
             n, steps, training.per_device_batch_size * accumulation * processes, training.per_device_batch_size,
             accumulation, processes, n_trained)

    start_step = 0
    ckpt = latest_checkpoint(work)
    if ckpt is not None:
        progress = load_checkpoint(accelerator, ckpt)
        start_step = int(progress["step"])
        log.info("resumed from %s (step %d of %d)", ckpt, start_step, steps)
    log_path = work / LOG_FILE
    if is_main:
        _truncate_log(log_path, start_step)

    hparams = {"model": model_config.to_dict(), "training": {k: v for k, v in training.to_dict().items()
                                                              if k != "resources"},
               "processes": processes, "gradient_accumulation": accumulation, **(run_info or {})}
    accelerator.init_trackers("train", config=_flat_hparams(hparams))

    sampler = StreamSampler(n, training.per_device_batch_size, processes, rank, training.seed,
                            start=start_step * accumulation, stop=steps * accumulation)
    source = dataset
    if training.cache_vit_features:
        if unwrapped.visual is None or not model_config.freeze_vit or model_config.frozen_vit_train_mode:
            raise ConfigError("training.cache_vit_features needs a frozen ViT in eval mode (freeze_vit on, "
                              "frozen_vit_train_mode off) and global or texture inputs")
        folder = work / VIT_FEATURES_DIR
        t0 = time.perf_counter()
        done = cache_vit_features(unwrapped.visual, dataset, folder, input_layout=model_config.input_layout,
                                  device=accelerator.device, rank=rank, processes=processes,
                                  autocast=accelerator.autocast)
        accelerator.wait_for_everyone()
        log.info("process %d: ViT features of %d scans computed in %.1f s (%s)", rank, done,
                 time.perf_counter() - t0, folder)
        source = VitFeatureDataset(dataset, folder)
    source = MemoryCache(source, training.memory_cache_mb) if training.memory_cache_mb > 0 else source
    pairing = None
    if training.report_pairing == "reshuffled":
        samples = getattr(dataset, "samples", None)
        if samples is None or not all(isinstance(s, dict) and "texts" in s for s in samples):
            raise ConfigError("report_pairing reshuffled: needs a dataset whose samples hold their region texts "
                              "(reg2rg.dataset.Reg2RGDataset)")
        pairing = EpochPairing([s["texts"] for s in samples], sampler.per_epoch, training.seed)
        log.info("report_pairing reshuffled: every training scan gets another scan's region texts, a new pairing "
                 "every epoch")
    loader = torch.utils.data.DataLoader(
        _Keyed(source, pairing), batch_sampler=sampler, collate_fn=TrainCollate(tokenizer, model_config, training.seed, rank),
        num_workers=training.num_workers, generator=torch.Generator().manual_seed(training.seed),
        prefetch_factor=training.prefetch_factor if training.num_workers else None,
        persistent_workers=False, pin_memory=torch.cuda.is_available())
    samples_per_step = training.per_device_batch_size * accumulation * processes
    bar = tqdm(total=steps, initial=start_step, disable=not accelerator.is_local_main_process, desc="train",
               unit="step", dynamic_ncols=True, mininterval=1.0)
    step, run_steps = start_step, 0
    losses: list[float] = []
    t_log, steps_since_log = time.perf_counter(), 0
    t_start = time.perf_counter()
    stopped_early = False
    if step < steps:
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**model_inputs(batch, accelerator.device)).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and training.max_grad_norm and not uses_deepspeed():
                    accelerator.clip_grad_norm_(params, training.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach().float().item()))
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            run_steps += 1
            steps_since_log += 1
            step_loss = sum(losses) / len(losses)
            losses = []
            bar.update(1)
            if step % training.log_every == 0 or step == steps:
                mean_loss = accelerator.reduce(torch.tensor([step_loss], device=accelerator.device), "mean").item()
                elapsed = time.perf_counter() - t_log
                rate = steps_since_log * samples_per_step / elapsed if elapsed > 0 else float("nan")
                lr = scheduler.get_last_lr()[0]
                record = {"step": step, "epoch": (step * accumulation) // sampler.per_epoch, "loss": mean_loss,
                          "lr": lr, "samples_per_s": rate}
                accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/samples_per_s": rate}, step=step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{rate:.2f}")
                if is_main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    log.info("step %d/%d loss %.4f lr %.3g %.2f samples/s", step, steps, mean_loss, lr, rate)
                t_log, steps_since_log = time.perf_counter(), 0
            if step % training.checkpoint_every == 0 or step == steps:
                save_checkpoint(accelerator, work, step, {"step": step, "micro_batches": step * accumulation,
                                                           "fingerprint": fingerprint}, training.keep_checkpoints)
            if step >= steps:
                break
            if max_steps_this_run is not None and run_steps >= max_steps_this_run:
                stopped_early = True
                break
    bar.close()
    del loader
    wall = time.perf_counter() - t_start
    if stopped_early:
        log.info("stopped after %d steps of this run (step %d of %d); run again to resume", run_steps, step, steps)
        accelerator.end_training()
        return None

    accelerator.wait_for_everyone()
    write_rank_report(accelerator, work, unwrapped)  # a completed run only: one stopped early returned above
    if is_main:
        _write_output(unwrapped, tokenizer, out, work, {
            **(run_info or {}),
            "model": model_config.to_dict(),
            "training": training.to_dict(),
            "processes": processes,
            "gradient_accumulation": accumulation,
            "effective_batch_size": samples_per_step,
            "steps": steps,
            "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision,
            "train_cases": len(dataset),
            "fingerprint": fingerprint,
            "wall_time_s_last_run": wall,
            "git": git_commit(),
            "versions": versions(),
        })
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def config_digest(run_config: dict) -> str:
    """Short digest of a run's settings (model, training, data set, tokenizer, processes) for result tables."""
    return run_config.get("fingerprint", _sha256_json(run_config))[:16]


def _write_output(model, tokenizer, out: Path, work: Path, run_config: dict) -> None:
    from reg2rg.model.build import CONFIG_FILE, save_trained

    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise InputError(out, "exists and is not a trained model folder: not overwriting it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.tokenizer = tokenizer
    save_trained(model, partial)
    run_config = dict(run_config, config_digest=run_config["fingerprint"][:16])
    (partial / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2, default=str) + "\n")
    if (work / LOG_FILE).is_file():
        shutil.copyfile(work / LOG_FILE, partial / LOG_FILE)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    log.info("wrote %s", out)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

def _parse_sets(pairs: Sequence[str]) -> tuple[dict, dict]:
    """--set training.key=value / model.key=value (values in YAML) -> (training overrides, model overrides)."""
    import yaml

    training, model = {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {pair!r}: expected training.KEY=VALUE or model.KEY=VALUE")
        section, name = key.split(".", 1)
        target = {"training": training, "model": model}.get(section)
        if target is None:
            raise ConfigError(f"--set {pair!r}: section must be 'training' or 'model'")
        target[name.replace(".", "__")] = yaml.safe_load(value)
    return training, model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reg2rg.train", description="Train a Reg2RG model (run it under "
                                "`accelerate launch`; see docs/training.md).")
    p.add_argument("--manifest", required=True, help="training manifest (results/{dataset}/manifest/train.parquet)")
    p.add_argument("--cache", required=True, help="the cache stage's folder (results/{dataset}/cache), or its "
                   "{split}.parquet")
    p.add_argument("--work", required=True, help="work folder: checkpoints, TensorBoard logs, training log")
    p.add_argument("--out", required=True, help="the trained model folder to write")
    p.add_argument("--config", default=None, help="workflow config with presets: and training: "
                   "(default: config/config.yaml of the working directory; read only for --preset or --training "
                   "without their -json form: the workflow passes both as JSON)")
    p.add_argument("--preset", default=None, help="model preset name in the config")
    p.add_argument("--preset-json", default=None, help="the model preset mapping as JSON (instead of --preset)")
    p.add_argument("--training", default=None, help="training settings name in the config (default: the preset's)")
    p.add_argument("--training-json", default=None, help="the training mapping as JSON (instead of --training)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (the workflow's trained tiny tokenizer)")
    p.add_argument("--dataset", default=None, help="data set name, recorded in the output")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. training.max_steps=20 or model.llm.dtype=float32 (repeatable)")
    p.add_argument("--max-steps-this-run", type=int, default=None,
                   help="stop after this many optimizer steps of this run, as if killed (then rerun to resume)")
    p.add_argument("--require-gpus", type=int, default=0, metavar="N",
                   help="refuse to start unless PyTorch sees at least N CUDA devices (the workflow passes the "
                        "GPUs its job asked for, so that a CPU build of PyTorch never trains in their place)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def require_gpus(n: int, preset: str | None = None) -> None:
    """ConfigError unless PyTorch sees at least `n` CUDA devices (no-op for n <= 0); the message names the preset
    whose training settings asked for them."""
    if n <= 0:
        return
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen < n:
        build = f"PyTorch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        asker = f"preset {preset!r} (training.{preset}.resources.gpu)" if preset else "the training job"
        raise ConfigError(
            f"{asker} asks for {n} GPU(s) but PyTorch sees {seen} ({build}; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run it on a GPU node with a CUDA build of PyTorch "
            "(envs/core.yaml; on a login node without a driver create the env with CONDA_OVERRIDE_CUDA set), or set "
            "training.<preset>.resources.gpu: 0 to train on the CPU")


def _cache_dir(path) -> Path:
    p = Path(path)
    return p.parent if p.suffix == ".parquet" else p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    for noisy in ("accelerate", "deepspeed", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from reg2rg.errors import Reg2RGError

    try:
        return _main(args)
    except Reg2RGError as err:
        logging.getLogger("reg2rg").error("%s", err)
        return 2


def _main(args) -> int:
    require_gpus(args.require_gpus, args.preset or args.training)
    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.manifest import read_manifest
    from reg2rg.model.config import config_from_preset

    # the workflow passes the resolved preset and training settings as JSON: the config is read only for names
    need_config = (args.preset and not args.preset_json) or not args.training_json
    cfg = read_workflow_config(args.config) if need_config else {}
    if args.preset_json:
        preset = json.loads(args.preset_json)
    elif args.preset:
        presets = cfg.get("presets") or {}
        if args.preset not in presets:
            raise ConfigError(f"no model preset {args.preset!r}; have {', '.join(sorted(presets))}")
        preset = presets[args.preset]
    else:
        raise ConfigError("give --preset NAME or --preset-json")
    training_sets, model_sets = _parse_sets(args.set)
    if args.training_json:
        training_map = json.loads(args.training_json)
    else:
        name = args.training or args.preset
        if not name:
            raise ConfigError("give --training NAME or --training-json with --preset-json")
        training_map = (cfg.get("training") or {}).get(name)
        if training_map is None:
            raise ConfigError(f"no training settings {name!r} in the config")
    training = TrainingConfig.from_dict({**training_map, **training_sets})
    model_config = config_from_preset(preset, **model_sets)
    tokenizer = resolve_tokenizer(model_config, args.tokenizer)
    manifest = read_manifest(args.manifest)
    if training.report_pairing == "shuffled":
        from reg2rg.manifest import paired_with_other_reports

        manifest = paired_with_other_reports(manifest[manifest.status == "included"], training.seed)
        log.info("report_pairing shuffled: every training scan is paired with another scan's report")
    dataset = Reg2RGDataset(manifest, _cache_dir(args.cache), model_config.input_size, split="train", text=True,
                            lfd=model_config.use_lfd)
    run_info = {"dataset": args.dataset, "preset": args.preset, "manifest": str(args.manifest),
                "cache": str(args.cache), "tokenizer_source": str(args.tokenizer or model_config.tokenizer_path
                                                                   or model_config.llm.path),
                "skipped_cases": [list(s) for s in getattr(dataset, "skipped", [])]}
    train(model_config, training, dataset=dataset, tokenizer=tokenizer, work_dir=args.work, out_dir=args.out,
          run_info=run_info, max_steps_this_run=args.max_steps_this_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
