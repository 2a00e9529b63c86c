"""GPU check of the model side: samples/s and peak memory of a training step (forward, backward, AdamW step) of
the paper preset with random weights: Llama-2-7B's configuration (bf16, frozen, LoRA r 8 on q_proj/v_proj),
RadFM's ViT (frozen) and Perceiver, the mask encoder, 10 regions per scan at 256 x 256 x 64, report targets
of RadGenome-like length; with and without gradient checkpointing, and with the ViT run at every step and
on cached ViT features (training.cache_vit_features).

    python benchmarks/gpu_train_step.py [--steps 5] [--batch-size 1] [--out gpu_train_step.json]
    python benchmarks/gpu_train_step.py --tiny      # the tiny preset on the CPU (what the tests run)

No download: the tokenizer is a byte-level BPE trained here on the report texts (its tokens are shorter than
Llama-2's, so --target-tokens sets the report length in tokens directly); the weights are random.
"""
from __future__ import annotations

import argparse
import copy
import json
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


def run(args) -> dict:
    import torch

    from reg2rg.model import build_model
    from reg2rg.train import make_batch, model_inputs

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, config = build(args.tiny, Path(tmp) / "tok", args.vocab)
    torch.manual_seed(0)
    base = build_model(config, tokenizer)
    dtype = torch.bfloat16 if (device.type == "cuda" and not args.tiny) else None
    items = make_items(config, args.batch_size * (args.steps + 1), args.regions, args.target_tokens, tokenizer)
    batches = [make_batch(items[i:i + args.batch_size], tokenizer, config)
               for i in range(0, len(items), args.batch_size)]
    results = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "preset": "tiny" if args.tiny else "paper (Llama-2-7B config, RadFM ViT, random weights)",
               "batch_size": args.batch_size, "regions": args.regions, "steps": args.steps,
               "tokens_per_sample": round(sum(int(b["attention_mask"].sum()) for b in batches) / len(items), 1),
               "runs": {}}
    for ckpt in (False, True):
        for cached in (False, True):
            model = copy.deepcopy(base) if not args.tiny else base
            if ckpt:
                model.enable_gradient_checkpointing()
            model.to(device)
            if dtype is not None:  # the trained modules in bf16 too, without DeepSpeed's fp32 master copy and
                # fp32 Adam states (16 bytes per trained parameter more in a real run)
                model.to(dtype)
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
            times = []
            try:
                for k, b in enumerate(bs):
                    t0 = time.perf_counter()
                    loss = model(**model_inputs(b, device, dtype=dtype)).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if k:  # the first step warms up
                        times.append(time.perf_counter() - t0)
                rec = {"samples_per_s": round(args.batch_size * len(times) / sum(times), 4),
                       "step_s": round(sum(times) / len(times), 4), "loss": float(loss)}
            except torch.cuda.OutOfMemoryError as err:  # noqa: PERF203
                rec = {"error": f"out of memory: {str(err).splitlines()[0]}"}
            if device.type == "cuda":
                rec["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            name = ("checkpointing" if ckpt else "no_checkpointing") + ("_cached_vit" if cached else "")
            results["runs"][name] = rec
            print(name, json.dumps(rec), flush=True)
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


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
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
