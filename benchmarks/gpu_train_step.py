"""GPU check of the model side: samples/s and peak memory of a training step (forward, backward, AdamW step) of
the paper preset with random weights: Llama-2-7B's configuration (bf16, frozen, LoRA r 8 on q_proj/v_proj),
RadFM's ViT (frozen) and Perceiver, the mask encoder, 10 regions per scan at 256 x 256 x 64, report targets
of RadGenome-like length; with and without gradient checkpointing, and with the ViT run at every step and
on cached ViT features (training.cache_vit_features); then the real path, `zero2`: one process under
`accelerate launch` with config/accelerate/zero2.yaml (DeepSpeed ZeRO-2, bf16 with fp32 master weights),
prepared by reg2rg.train's own Accelerator and DeepSpeed settings, gradient checkpointing on.

    python benchmarks/gpu_train_step.py [--steps 5] [--batch-size 1] [--out gpu_train_step.json] [--no-zero2]
    python benchmarks/gpu_train_step.py --tiny      # the tiny preset on the CPU (what the tests run)
    python benchmarks/gpu_train_step.py --tiny --cpu --zero2   # the ZeRO-2 variant on the CPU too (slow start)

The model is built once, directly on the device and, for the paper preset on a GPU, in bf16 (no fp32 7B on
the CPU, no copy per variant): the variants without checkpointing run first, then checkpointing is switched on
for the same model. The ZeRO-2 variant runs in its own process after the first model is freed, and builds its
own (as reg2rg.train does). Everything fits a 10-minute GPU slot by construction; no GPU run has been measured.

No download: the tokenizer is a byte-level BPE trained here on the report texts (its tokens are shorter than
Llama-2's, so --target-tokens sets the report length in tokens directly); the weights are random.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}


def build(tiny: bool, tokenizer_dir: Path, vocab: int):
    from reg2rg.bench import _SENTENCES
    from reg2rg.constants import REGIONS
    from reg2rg.model import load_preset, load_tokenizer, train_tiny_tokenizer

    texts = _SENTENCES * 4 + [f"The region {i} is {a}:" for i in range(1, 11) for a in REGIONS]
    train_tiny_tokenizer(texts, vocab, tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    if tiny:
        config = load_preset("tiny", freeze_vit=True, gradient_checkpointing=False)
    else:
        config = load_preset("paper", vision_checkpoint=None, perceiver_checkpoint=None, gradient_checkpointing=False,
                             llm={"arch": "llama", "path": None, "sizes": LLAMA2_7B, "vocab_size": 32000,
                                  "dtype": "bfloat16", "train_base": False})
    return tokenizer, config


def make_items(config, n: int, regions: int, target_tokens: int, tokenizer):
    import numpy as np
    import torch

    from reg2rg.bench import _SENTENCES

    rng = np.random.default_rng(0)
    x, y, z = config.input_size
    items = []
    for s in range(n):
        texts = []
        for _ in range(regions):  # sentences until the region's text reaches its share of target_tokens
            t, want = "", max(4, int(rng.normal(target_tokens / regions, target_tokens / regions / 3)))
            while len(tokenizer(t)["input_ids"]) < want:
                t = (t + " " + str(rng.choice(_SENTENCES))).strip()
            texts.append(t)
        items.append({"case_id": f"case_{s}", "global": torch.rand(1, z, y, x) * 2 - 1,
                      "texture": torch.rand(regions, 1, z, y, x) * 2 - 1,
                      "geometry": (torch.rand(regions, 1, z, y, x) > 0.7).float(),
                      "regions": list(range(regions)), "region_texts": texts, "report": None})
    return items


def build_on(device, dtype, config, tokenizer):
    """build_model with every parameter created on `device` in `dtype` (None: as the config says): a 7B decoder
    is initialised on the GPU in bf16 in seconds, never materialised in fp32 on the CPU."""
    import torch

    from reg2rg.model import build_model

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_model(config, tokenizer)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device) if dtype is None else model.to(device, dtype)  # the LLM too, whatever llm.dtype says


def _timed_steps(step, batches, device) -> dict:
    import time as _time

    import torch

    times, loss = [], None
    for k, b in enumerate(batches):
        t0 = _time.perf_counter()
        loss = step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k:  # the first step warms up
            times.append(_time.perf_counter() - t0)
    return {"samples_per_s": round(len(times) / sum(times), 4), "step_s": round(sum(times) / len(times), 4),
            "loss": float(loss)}


def setup(args):
    import torch

    from reg2rg.dataset import make_batch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, config = build(args.tiny, Path(tmp) / "tok", args.vocab)
    items = make_items(config, args.batch_size * (args.steps + 1), args.regions, args.target_tokens, tokenizer)
    batches = [make_batch(items[i:i + args.batch_size], tokenizer, config)
               for i in range(0, len(items), args.batch_size)]
    return device, tokenizer, config, items, batches


def run(args) -> dict:
    import torch

    from reg2rg.dataset import model_inputs

    device, tokenizer, config, items, batches = setup(args)
    dtype = torch.bfloat16 if (device.type == "cuda" and not args.tiny) else None
    results = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "preset": "tiny" if args.tiny else "paper (Llama-2-7B config, RadFM ViT, random weights)",
               "batch_size": args.batch_size, "regions": args.regions, "steps": args.steps,
               "tokens_per_sample": round(sum(int(b["attention_mask"].sum()) for b in batches) / len(items), 1),
               "runs": {}}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # Every module in bf16 on a GPU, the trained ones too: without DeepSpeed's fp32 master copy and fp32 Adam
    # states (16 bytes per trained parameter more in a real run; the zero2 variant has them).
    model = build_on(device, dtype, config, tokenizer)
    results["build_s"] = round(time.perf_counter() - t0, 2)
    print("built the model in", results["build_s"], "s", flush=True)
    for ckpt in (False, True):
        for cached in (False, True):
            if ckpt and not model.visual.vit.gradient_checkpointing:
                model.enable_gradient_checkpointing()  # for the rest of the variants (the same model)
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
            bs = batches
            if cached:  # the ViT's outputs, as training.cache_vit_features keeps them
                bs = []
                for b in batches:
                    vol = torch.cat([b["global"], b["texture"]]).to(device, dtype or torch.float32)
                    feats = model.visual.vit_features(vol).to(torch.float16)
                    nb = {k: v for k, v in b.items() if k not in ("global", "texture")}
                    nb["global_vit"], nb["texture_vit"] = feats[:args.batch_size], feats[args.batch_size:]
                    bs.append(nb)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

            def step(b):
                loss = model(**model_inputs(b, device, dtype=dtype)).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            try:
                rec = _timed_steps(step, bs, device)
                rec["samples_per_s"] = round(rec["samples_per_s"] * args.batch_size, 4)
            except torch.cuda.OutOfMemoryError as err:  # noqa: PERF203
                rec = {"error": f"out of memory: {str(err).splitlines()[0]}"}
            if device.type == "cuda":
                rec["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            name = ("checkpointing" if ckpt else "no_checkpointing") + ("_cached_vit" if cached else "")
            results["runs"][name] = rec
            print(name, json.dumps(rec), flush=True)
            del opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.zero2 if args.zero2 is not None else device.type == "cuda":
        results["runs"]["zero2"] = run_zero2(args)
        print("zero2", json.dumps(results["runs"]["zero2"]), flush=True)
    return results


def _forwarded(args) -> list[str]:
    out = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--regions", str(args.regions),
           "--target-tokens", str(args.target_tokens), "--vocab", str(args.vocab)]
    return out + (["--tiny"] if args.tiny else []) + (["--cpu"] if args.cpu else [])


def run_zero2(args) -> dict:
    """The zero2 variant: this script as one `accelerate launch` process with config/accelerate/zero2.yaml."""
    env = dict(os.environ)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # DeepSpeed's CPU accelerator (docs/training.md)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zero2.json"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "config" / "accelerate" / "zero2.yaml"), "--num_processes", "1",
               str(Path(__file__).resolve()), "--zero2-worker", str(out), *_forwarded(args)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        return json.loads(out.read_text())


def zero2_worker(args) -> int:
    """Inside `accelerate launch`: the model built as reg2rg.train builds it (the LLM in the preset's dtype, the
    trained modules in fp32), prepared with reg2rg.train's Accelerator and DeepSpeed settings, timed steps."""
    import torch

    from reg2rg.dataset import model_inputs
    from reg2rg.train import TrainingConfig, fill_deepspeed_config, make_accelerator

    device, tokenizer, config, items, batches = setup(args)
    training = TrainingConfig(per_device_batch_size=args.batch_size, effective_batch_size=args.batch_size,
                              mixed_precision="no" if args.tiny else "bf16", gradient_checkpointing=True,
                              learning_rate=5e-5, num_workers=0)
    with tempfile.TemporaryDirectory() as work:
        accelerator = make_accelerator(training, Path(work), 1)
        torch.manual_seed(0)
        model = build_on(accelerator.device, None, config.replace(gradient_checkpointing=True), tokenizer)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training.learning_rate)
        fill_deepspeed_config(accelerator, training, 1)
        model, opt = accelerator.prepare(model, opt)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def step(b):
            with accelerator.accumulate(model):
                loss = model(**model_inputs(b, accelerator.device)).loss
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad(set_to_none=True)
            return loss

        try:
            rec = _timed_steps(step, batches, accelerator.device)
            rec["samples_per_s"] = round(rec["samples_per_s"] * args.batch_size, 4)
        except torch.cuda.OutOfMemoryError as err:
            rec = {"error": f"out of memory: {str(err).splitlines()[0]}"}
        rec["distributed_type"] = str(accelerator.distributed_type)
        rec["mixed_precision"] = accelerator.mixed_precision
        if accelerator.device.type == "cuda":
            rec["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    Path(args.zero2_worker).write_text(json.dumps(rec))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny preset (runs on the CPU in seconds)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--regions", type=int, default=10)
    p.add_argument("--target-tokens", type=int, default=400, help="report target tokens per sample (all regions)")
    p.add_argument("--vocab", type=int, default=1000, help="size of the locally trained BPE")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--zero2", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the ZeRO-2 variant (default: on a GPU only)")
    p.add_argument("--zero2-worker", metavar="OUT", help=argparse.SUPPRESS)  # inside accelerate launch
    args = p.parse_args(argv)
    if args.zero2_worker:
        return zero2_worker(args)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
