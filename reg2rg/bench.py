"""Benchmarks. Each reports a ratio against a baseline measured in the same run on the same machine.

`reg2rg bench ingest`: seconds per volume of the whole `reg2rg ingest` process (a fresh `python -m reg2rg
ingest` subprocess, so interpreter start-up and imports count) against a plain read of the same file (a
fresh subprocess that only decompresses and loads the voxels with SimpleITK), on a CT-RATE-sized volume.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# CT-RATE-like geometry of the benchmark volume: in-plane about 0.7 mm, 1 mm slices.
BENCH_SPACING = (0.703125, 0.703125, 1.0)
BENCH_TARGET_SPACING = (1.0, 1.0, 3.0)

# Plain reads, each run in a fresh interpreter like the ingest itself.
_PLAIN_READ_SITK = (
    "import sys, SimpleITK as sitk\n"
    "a = sitk.GetArrayViewFromImage(sitk.ReadImage(sys.argv[1]))\n"
    "assert a.size > 0\n"
)
_PLAIN_READ_NIBABEL = (
    "import sys, numpy as np, nibabel as nib\n"
    "a = np.asanyarray(nib.load(sys.argv[1]).dataobj)\n"
    "assert a.size > 0\n"
)


def synthetic_chest_volume(shape=(512, 512, 300), seed: int = 0):
    """A chest-like int16 HU volume, array order [z, y, x] for `shape` given as (x, y, z).

    Air with a circular field of view padded with -1024, a body ellipse of soft tissue, two lungs, a heart,
    a spine and ribs, all with CT-like noise, so that gzip compresses it about as much as a real scan.
    """
    import numpy as np

    nx, ny, nz = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    out = np.empty((nz, ny, nx), dtype=np.int16)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    u = (xx - nx / 2) / (nx / 2)  # -1..1, patient left is +x in LPS
    v = (yy - ny / 2) / (ny / 2)  # -1..1, posterior is +y
    fov = u**2 + v**2 > 1.0
    body = (u / 0.85) ** 2 + (v / 0.62) ** 2 <= 1.0
    spine = (u / 0.09) ** 2 + ((v - 0.42) / 0.09) ** 2 <= 1.0
    ribs = body & ((u / 0.80) ** 2 + (v / 0.57) ** 2 > 0.88) & (np.cos(np.arctan2(v, u) * 14) > 0.3)
    chunk = 16
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        block = np.empty((z1 - z0, ny, nx), dtype=np.float32)
        for k in range(z0, z1):
            t = k / max(1, nz - 1)  # 0 at the bottom (abdomen), 1 at the apex
            lung_r = 0.10 + 0.25 * np.sin(np.pi * min(1.0, 0.2 + 0.9 * t))
            lungs = (((u - 0.38) / lung_r) ** 2 + (v / (lung_r * 1.4)) ** 2 <= 1.0) | (
                ((u + 0.38) / lung_r) ** 2 + (v / (lung_r * 1.4)) ** 2 <= 1.0
            )
            heart = ((u + 0.08) / 0.22) ** 2 + ((v + 0.1) / 0.2) ** 2 <= (1.0 - t) * 1.2
            s = block[k - z0]
            s.fill(-1000.0)
            s[body] = 35.0
            s[heart & body] = 45.0
            s[lungs & body] = -860.0
            s[ribs | spine] = 650.0
        noise = rng.standard_normal(block.shape, dtype=np.float32)
        noise *= 18.0
        block += noise
        block[:, fov] = -1024.0
        np.rint(block, out=block)
        out[z0:z1] = block.astype(np.int16)
    return out


def write_bench_volume(path, shape=(512, 512, 300), spacing=BENCH_SPACING) -> None:
    """Write the synthetic volume as a gzip NIfTI stored RAS-wise (direction diag(-1, -1, 1) in ITK's LPS
    world, as nibabel-written scans often are), so that the ingest has to reorient it too."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(synthetic_chest_volume(shape))
    img.SetSpacing(tuple(float(s) for s in spacing))
    nx, ny = shape[0], shape[1]
    # The first voxel sits at the patient's right-anterior corner; x and y run towards right and anterior.
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((spacing[0] * (nx - 1) / 2, spacing[1] * (ny - 1) / 2, -150.0))
    sitk.WriteImage(img, str(path), useCompression=True)


def _time_subprocess(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}")
    return elapsed


def bench_ingest(shape=(512, 512, 300), repeats: int = 3, workdir=None) -> dict:
    """Median seconds per volume of `python -m reg2rg ingest` and of a plain SimpleITK read of the same
    file, each in a fresh subprocess, `repeats` times, alternating the two to share any machine noise."""
    import reg2rg

    repeats = max(1, int(repeats))
    env = dict(os.environ)
    # Run the package that is being benchmarked, wherever the benchmark is started from.
    pkg_root = str(Path(reg2rg.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="reg2rg-bench-", dir=workdir) as tmp:
        src = Path(tmp) / "bench_ct.nii.gz"
        t0 = time.perf_counter()
        write_bench_volume(src, shape)
        log.info("wrote a %s benchmark volume (%.1f MB gzip) in %.1f s", "x".join(map(str, shape)),
                 src.stat().st_size / 1e6, time.perf_counter() - t0)
        out = Path(tmp) / "out" / "bench_ct.nii.gz"
        ingest_cmd = [sys.executable, "-m", "reg2rg", "ingest", str(src), str(out),
                      "--spacing", *(str(s) for s in BENCH_TARGET_SPACING)]
        read_cmd = [sys.executable, "-c", _PLAIN_READ_SITK, str(src)]
        nib_cmd = [sys.executable, "-c", _PLAIN_READ_NIBABEL, str(src)]
        help_cmd = [sys.executable, "-m", "reg2rg", "--help"]
        # One untimed run of each warms the page cache and the interpreter's .pyc files.
        _time_subprocess(read_cmd, env)
        _time_subprocess(ingest_cmd, env)
        ingest_s, read_s, nib_s, help_s = [], [], [], []
        for i in range(repeats):
            for p in (out, out.with_name("bench_ct.json")):
                p.unlink(missing_ok=True)  # no cache hit: every run does the whole work
            ingest_s.append(_time_subprocess(ingest_cmd, env))
            read_s.append(_time_subprocess(read_cmd, env))
            nib_s.append(_time_subprocess(nib_cmd, env))
            help_s.append(_time_subprocess(help_cmd, env))
            log.info("repeat %d/%d: ingest %.2f s, plain read %.2f s (nibabel %.2f s)",
                     i + 1, repeats, ingest_s[-1], read_s[-1], nib_s[-1])
        sidecar = json.loads(out.with_name("bench_ct.json").read_text())
    ingest_med = statistics.median(ingest_s)
    read_med = statistics.median(read_s)
    return {
        "ingest_seconds": round(ingest_med, 3),
        "plain_read_seconds": round(read_med, 3),
        "ratio": round(ingest_med / read_med, 3),
        "plain_read_nibabel_seconds": round(statistics.median(nib_s), 3),
        "cli_help_seconds": round(statistics.median(help_s), 3),
        "shape": list(shape),
        "spacing": list(BENCH_SPACING),
        "target_spacing": list(BENCH_TARGET_SPACING),
        "output_shape": sidecar["output"]["size"],
        "repeats": repeats,
        "ingest_runs": [round(x, 3) for x in ingest_s],
        "plain_read_runs": [round(x, 3) for x in read_s],
        "cpu_count": os.cpu_count(),
        "reg2rg_version": reg2rg.__version__,
    }


def cli_ingest(args) -> int:
    result = bench_ingest(shape=tuple(args.shape), repeats=args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    log.info("ingest %.2f s per volume vs plain read %.2f s: ratio %.2f (goal <= 3)",
             result["ingest_seconds"], result["plain_read_seconds"], result["ratio"])
    return 0


# --------------------------------------------------------------------------------------------------------------
# bench loader: the authors' per-sample loading against Reg2RGDataset over the cache
# --------------------------------------------------------------------------------------------------------------

# RadGenome-like scan and the paper's model input, both (x, y, z).
LOADER_SCAN_SHAPE = (480, 480, 240)
LOADER_SPACING = (0.75, 0.75, 1.5)


def synthetic_region_masks(shape_xyz, seed: int = 0):
    """Ten boolean region masks [10, z, y, x] (REGIONS order) on the `synthetic_chest_volume` phantom, with
    RadGenome-like extents: lung, pleura, bone and abdomen span most of the body, heart and mediastinum the
    middle, esophagus and trachea are thin tubes, thyroid small and high, breast anterior."""
    import numpy as np

    nx, ny, nz = (int(s) for s in shape_xyz)
    zz, yy, xx = np.ogrid[0:nz, 0:ny, 0:nx]
    u = (xx - nx / 2) / (nx / 2)
    v = (yy - ny / 2) / (ny / 2)
    t = zz / max(1, nz - 1)  # 0 abdomen .. 1 apex
    body = (u / 0.85) ** 2 + (v / 0.62) ** 2 <= 1.0
    lung_r = 0.10 + 0.25 * np.sin(np.pi * np.minimum(1.0, 0.2 + 0.9 * t))
    lungs = ((((u - 0.38) / lung_r) ** 2 + (v / (lung_r * 1.4)) ** 2 <= 1.0)
             | (((u + 0.38) / lung_r) ** 2 + (v / (lung_r * 1.4)) ** 2 <= 1.0)) & (t > 0.25)
    shell = ((((u - 0.38) / (lung_r + 0.03)) ** 2 + (v / (lung_r * 1.4 + 0.03)) ** 2 <= 1.0)
             | (((u + 0.38) / (lung_r + 0.03)) ** 2 + (v / (lung_r * 1.4 + 0.03)) ** 2 <= 1.0)) & (t > 0.22)
    masks = np.zeros((10, nz, ny, nx), dtype=bool)
    masks[0] = body & (t < 0.3) & ((u / 0.75) ** 2 + (v / 0.5) ** 2 <= 1.0)  # abdomen
    ribs = body & ((u / 0.80) ** 2 + (v / 0.57) ** 2 > 0.88)
    spine = (u / 0.09) ** 2 + ((v - 0.42) / 0.09) ** 2 <= 1.0
    masks[1] = (ribs & (np.cos(np.arctan2(v, u) * 14) > 0.3)) | spine  # bone
    masks[2] = body & (v < -0.45) & (np.abs(u) > 0.15) & (t > 0.3) & (t < 0.75)  # breast
    masks[3] = ((u + 0.05) / 0.04) ** 2 + ((v - 0.25) / 0.04) ** 2 <= 1.0  # esophagus
    masks[3] &= t > 0.2
    masks[4] = ((u + 0.08) / 0.22) ** 2 + ((v + 0.1) / 0.2) ** 2 <= (1.0 - t) * 1.2  # heart
    masks[4] &= (t > 0.3) & (t < 0.7)
    masks[5] = lungs
    masks[6] = (np.abs(u) < 0.15) & (np.abs(v) < 0.3) & (t > 0.4) & (t < 0.85)  # mediastinum
    masks[7] = shell & ~lungs  # pleura
    masks[8] = (np.abs(u) < 0.12) & (v > -0.35) & (v < -0.15) & (t > 0.92)  # thyroid
    masks[9] = (((u / 0.05) ** 2 + ((v + 0.05) / 0.05) ** 2 <= 1.0) & (t > 0.6))  # trachea and bronchie
    return masks


def write_loader_scan(folder, shape_xyz=LOADER_SCAN_SHAPE, seed: int = 0) -> dict:
    """One synthetic scan in both layouts: the ingested volume (int16 HU .nii.gz) and its uint16 region label
    file (what the cache stage reads), and one uint8 .nii.gz per region (RadGenome's layout, what the authors'
    loader reads). Returns the paths."""
    import numpy as np
    import SimpleITK as sitk

    from reg2rg.constants import REGIONS

    folder = Path(folder)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    ct = synthetic_chest_volume(shape_xyz, seed=seed)
    masks = synthetic_region_masks(shape_xyz, seed=seed)

    def write(arr, path):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(LOADER_SPACING)
        sitk.WriteImage(img, str(path), useCompression=True)

    volume = folder / "volume.nii.gz"
    write(ct, volume)
    label = np.zeros(ct.shape, dtype=np.uint16)
    region_files = {}
    for i, name in enumerate(REGIONS):
        label |= masks[i].astype(np.uint16) << np.uint16(i)
        region_files[name] = folder / "masks" / f"{name}.nii.gz"
        write(masks[i].astype(np.uint8), region_files[name])
    label_path = folder / "regions.nii.gz"
    write(label, label_path)
    return {"volume": volume, "label": label_path, "region_files": region_files}


def _loader_worker(conn, cache_dir, input_size, case_ids, threads):
    """A loader process (like one DataLoader worker): runs the jobs it is sent, answers (wall, cpu, maxrss)."""
    import resource

    import pandas as pd
    import torch

    from reg2rg.constants import REGIONS
    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.transforms import reference_inputs

    torch.set_num_threads(threads)
    dataset = None
    if cache_dir is not None:
        rows = [{"case_id": c, "split": "train", "status": "included", "region_texts": ["text"] * len(REGIONS),
                 "regions_usable": list(REGIONS), "report": "report"} for c in case_ids]
        dataset = Reg2RGDataset(pd.DataFrame(rows), cache_dir, input_size, text=True, torch_threads=threads)
        geometry_only = Reg2RGDataset(pd.DataFrame(rows), cache_dir, input_size, text=True, torch_threads=threads,
                                      images=False)
    while True:
        job = conn.recv()
        if job is None:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        if job[0] == "baseline":
            out = reference_inputs(job[1], job[2], input_size)
            n = len(out["texture"])
        else:
            out = (dataset if job[0] == "ours" else geometry_only)[job[1]]
            n = out["geometry"].shape[0]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        del out
        conn.send((wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, n))
    conn.close()


def _start_worker(*args):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_loader_worker, args=(child,) + args, daemon=True)
    proc.start()
    return proc, parent


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def bench_loader(shape=LOADER_SCAN_SHAPE, input_size=(256, 256, 64), scans: int = 1, repeats: int = 3,
                 baseline_repeats: int | None = 1, threads: int = 1, workdir=None) -> dict:
    """Samples per second of the authors' per-sample loading (reg2rg.transforms.reference_inputs: every file read as
    float64 with nibabel, ten masked crops, the global volume and the ten masks resized with area
    interpolation) against Reg2RGDataset reading the cache stage's files, on the same synthetic scans.

    Each side runs in its own process with `threads` torch threads (a DataLoader worker has 1), the two taking
    turns sample by sample so that both see the same machine load; CPU seconds and peak RSS are per process."""
    import numpy as np

    import reg2rg
    from reg2rg.cache import cache_scan

    repeats = max(1, int(repeats))
    baseline_repeats = repeats if baseline_repeats is None else max(1, int(baseline_repeats))
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="reg2rg-bench-loader-", dir=workdir) as tmp:
        tmp = Path(tmp)
        cases, cache_bytes, ingested_bytes, radgenome_bytes = [], [], [], []
        t0 = time.perf_counter()
        for k in range(int(scans)):
            case = f"bench_{k}"
            files = write_loader_scan(tmp / case, shape, seed=k)
            meta = cache_scan(files["volume"], files["label"], tmp / "cache" / f"{case}.safetensors", input_size)
            cases.append((case, files))
            cache_bytes.append(meta["bytes"] + (tmp / "cache" / f"{case}.json").stat().st_size)
            ingested_bytes.append(files["volume"].stat().st_size + files["label"].stat().st_size)
            radgenome_bytes.append(files["volume"].stat().st_size
                                   + sum(p.stat().st_size for p in files["region_files"].values()))
        log.info("wrote and cached %d scan(s) of %s in %.1f s", len(cases), "x".join(map(str, shape)),
                 time.perf_counter() - t0)
        ids = [c for c, _ in cases]
        base_proc, base = _start_worker(None, tuple(input_size), ids, threads)
        ours_proc, ours = _start_worker(str(tmp / "cache"), tuple(input_size), ids, threads)
        runs = {"baseline": [], "ours": [], "geometry": []}
        try:
            # one untimed sample of ours (scratch buffers); the baseline's first sample pays only its imports,
            # a fraction of a percent of it, so it is timed
            ours.send(("ours", 0))
            ours.recv()
            for r in range(max(repeats, baseline_repeats)):
                for k, (case, files) in enumerate(cases):
                    if r < baseline_repeats:
                        base.send(("baseline", str(files["volume"]), {n: str(p) for n, p in files["region_files"].items()}))
                        runs["baseline"].append(base.recv())
                    if r < repeats:
                        ours.send(("ours", k))
                        runs["ours"].append(ours.recv())
                        ours.send(("geometry", k))
                        runs["geometry"].append(ours.recv())
                log.info("repeat %d: baseline %s s, ours %s s", r + 1,
                         [round(x[0], 2) for x in runs["baseline"][-len(cases):]],
                         [round(x[0], 3) for x in runs["ours"][-len(cases):]])
        finally:
            for conn, proc in ((base, base_proc), (ours, ours_proc)):
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
                proc.join(30)
    load_after = _load_average()

    def summary(rs):
        wall = sum(x[0] for x in rs)
        return {"samples_per_s": len(rs) / wall, "seconds_per_sample": statistics.median(x[0] for x in rs),
                "cpu_seconds_per_sample": sum(x[1] for x in rs) / len(rs), "peak_rss_bytes": max(x[2] for x in rs),
                "regions_per_sample": rs[0][3]}

    b, o, geo = summary(runs["baseline"]), summary(runs["ours"]), summary(runs["geometry"])
    return {
        "baseline_samples_per_s": round(b["samples_per_s"], 4),
        "samples_per_s": round(o["samples_per_s"], 3),
        "ratio": round(o["samples_per_s"] / b["samples_per_s"], 2),
        "cpu_ratio": round(b["cpu_seconds_per_sample"] / o["cpu_seconds_per_sample"], 2),
        "baseline_cpu_seconds_per_sample": round(b["cpu_seconds_per_sample"], 3),
        "cpu_seconds_per_sample": round(o["cpu_seconds_per_sample"], 4),
        "baseline_peak_rss_bytes": b["peak_rss_bytes"],
        "peak_rss_bytes": o["peak_rss_bytes"],
        # with training.cache_vit_features the loader makes the geometry inputs only (Reg2RGDataset(images=False))
        "cached_vit_samples_per_s": round(geo["samples_per_s"], 3),
        "cached_vit_cpu_seconds_per_sample": round(geo["cpu_seconds_per_sample"], 4),
        "cache_bytes_per_scan": int(np.mean(cache_bytes)),
        "ingested_bytes_per_scan": int(np.mean(ingested_bytes)),
        "cache_to_ingested": round(float(np.sum(cache_bytes) / np.sum(ingested_bytes)), 3),
        "radgenome_bytes_per_scan": int(np.mean(radgenome_bytes)),
        "regions_per_sample": o["regions_per_sample"],
        "scan_shape": list(shape),
        "input_size": list(input_size),
        "scans": len(cases),
        "repeats": repeats,
        "baseline_repeats": baseline_repeats,
        "torch_threads_per_loader": threads,
        "baseline_runs_s": [round(x[0], 3) for x in runs["baseline"]],
        "runs_s": [round(x[0], 4) for x in runs["ours"]],
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "reg2rg_version": reg2rg.__version__,
    }


def _write_result(result: dict, out) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def cli_loader(args) -> int:
    result = bench_loader(shape=tuple(args.shape), input_size=tuple(args.input_size), scans=args.scans,
                          repeats=args.repeats, baseline_repeats=args.baseline_repeats, threads=args.threads)
    _write_result(result, args.out)
    log.info("loader: %.3f samples/s vs the authors' %.4f: ratio %.1f (goal >= 30); cache %.2fx the ingested "
             "volume and masks (goal <= 2); load average %s -> %s", result["samples_per_s"],
             result["baseline_samples_per_s"], result["ratio"], result["cache_to_ingested"],
             result["load_average_before"], result["load_average_after"])
    return 0


# --------------------------------------------------------------------------------------------------------------
# bench padding / bench frozen: training steps of the tiny preset
# --------------------------------------------------------------------------------------------------------------

# RadGenome-like region report sentences; a region's text takes 1-4 of them.
_SENTENCES = [
    "No mass or infiltrative lesion is seen in either lung parenchyma.",
    "There is a 4 mm nodule in the posterior segment of the right upper lobe.",
    "Trachea and both main bronchi are open and no obstructive pathology is detected.",
    "Heart contour and size are normal and there is no pericardial effusion.",
    "Calcified atheroma plaques are observed in the thoracic aorta and coronary arteries.",
    "Thoracic esophagus calibration was normal and no significant tumoral wall thickening was detected.",
    "Mediastinal lymph nodes are not enlarged by short axis criteria.",
    "No pleural effusion or pleural thickening is detected.",
    "Degenerative changes are observed in the thoracic vertebrae.",
    "Thyroid gland is of normal size and density.",
    "Upper abdominal organs included in the sections are unremarkable as far as can be seen.",
    "Both breasts show dense fibroglandular tissue without a discrete mass.",
]

PAD_TO = 2048  # the authors' fixed length


def _tiny_setup(folder, n_items: int, freeze_vit: bool = False, paper_vit: bool = False, seed: int = 0,
                regions: int = 10):
    """Tokenizer, config and random items (Reg2RGDataset layout) of the tiny preset, for step benchmarks."""
    import numpy as np
    import torch

    from reg2rg.constants import REGIONS
    from reg2rg.model import load_preset, load_tokenizer, train_tiny_tokenizer

    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(_SENTENCES, size=int(rng.integers(1, 5)), replace=False))
             for _ in range(n_items * regions)]
    train_tiny_tokenizer(texts + [f"The region {i} is {a}:" for i in range(1, 11) for a in REGIONS], 1000, folder)
    tokenizer = load_tokenizer(folder)
    overrides = {"freeze_vit": bool(freeze_vit)}
    if paper_vit:  # RadFM's ViT (the paper's encoder) on the tiny input size
        overrides["vit"] = {"patch_size": [32, 32, 4], "dim": 768, "depth": 12, "heads": 8, "dim_head": 64,
                            "mlp_dim": 2048, "in_channels": 3, "pos_grid": [16, 16, 128]}
        overrides["perceiver"] = {"depth": 6, "num_latents": 32, "heads": 8, "dim_head": 64, "ff_mult": 4}
    config = load_preset("tiny", **overrides)
    x, y, z = config.input_size
    items = []
    for s in range(n_items):
        k = regions
        items.append({"case_id": f"case_{s}", "global": torch.randn(1, z, y, x).clamp_(-1, 1),
                      "texture": torch.randn(k, 1, z, y, x).clamp_(-1, 1),
                      "geometry": (torch.rand(k, 1, z, y, x) > 0.7).float(), "regions": list(range(k)),
                      "region_texts": texts[s * regions:(s + 1) * regions], "report": None})
    return tokenizer, config, items


def _pad_batch(batch: dict, length: int, pad_id: int) -> dict:
    import torch.nn.functional as F

    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"a sample is longer ({batch['input_ids'].shape[1]} tokens) than the fixed length {length}")
    out = dict(batch)
    out["input_ids"] = F.pad(batch["input_ids"], (0, extra), value=pad_id)
    out["attention_mask"] = F.pad(batch["attention_mask"], (0, extra), value=0)
    out["labels"] = F.pad(batch["labels"], (0, extra), value=-100)
    return out


def _train_step(model, optimizer, inputs) -> float:
    t0 = time.perf_counter()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _model_and_optimizer(config, tokenizer, seed: int = 0):
    import torch

    from reg2rg.model import build_model

    torch.manual_seed(seed)
    model = build_model(config, tokenizer)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, opt


def bench_padding(batch_size: int = 3, steps: int = 4, threads: int | None = None, regions: int = 10,
                  workdir=None) -> dict:
    """Tokens per second (real, unpadded tokens) of a training step (forward, backward, AdamW step) of the
    tiny preset with batches padded to their longest sample (ours) and to 2048 tokens (the authors'),
    alternating step by step on the same batches."""
    import torch

    from reg2rg.dataset import make_batch, model_inputs

    if threads:
        torch.set_num_threads(int(threads))
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="reg2rg-bench-padding-", dir=workdir) as tmp:
        tokenizer, config, items = _tiny_setup(Path(tmp) / "tok", batch_size * steps, regions=regions)
    model, opt = _model_and_optimizer(config, tokenizer)
    batches = [make_batch(items[i:i + batch_size], tokenizer, config)
               for i in range(0, len(items), batch_size)]
    real = [int(b["attention_mask"].sum()) for b in batches]
    longest = [int(b["input_ids"].shape[1]) for b in batches]
    dyn_s, fixed_s = [], []
    _train_step(model, opt, model_inputs(batches[0], "cpu"))  # warm-up
    for b in batches:
        dyn_s.append(_train_step(model, opt, model_inputs(b, "cpu")))
        fixed_s.append(_train_step(model, opt, model_inputs(_pad_batch(b, PAD_TO, tokenizer.pad_token_id), "cpu")))
    tok_dyn, tok_fixed = sum(real) / sum(dyn_s), sum(real) / sum(fixed_s)
    return {
        "baseline_tokens_per_s": round(tok_fixed, 1),
        "tokens_per_s": round(tok_dyn, 1),
        "ratio": round(tok_dyn / tok_fixed, 2),
        "baseline_step_s": round(statistics.median(fixed_s), 4),
        "step_s": round(statistics.median(dyn_s), 4),
        "pad_to": PAD_TO,
        "batch_size": batch_size,
        "steps": len(batches),
        "real_tokens_per_sample": round(sum(real) / (len(batches) * batch_size), 1),
        "padded_length_per_batch": longest,
        "preset": "tiny",
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "cpu_count": os.cpu_count(),
    }


def bench_frozen(batch_size: int = 3, steps: int = 4, paper_vit: bool = False, threads: int | None = None,
                 regions: int = 10, workdir=None) -> dict:
    """Seconds per training step of the tiny preset with the ViT frozen: the ViT run at every step on the
    global and texture volumes (baseline) against its outputs cached per scan in fp16
    (training.cache_vit_features: the Perceiver, projections, mask encoder and LLM still train), alternating
    step by step on the same batches from the same weights. Also the loss difference of the first step."""
    import copy

    import torch

    from reg2rg.dataset import make_batch, model_inputs, to_input_layout

    if threads:
        torch.set_num_threads(int(threads))
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="reg2rg-bench-frozen-", dir=workdir) as tmp:
        tokenizer, config, items = _tiny_setup(Path(tmp) / "tok", batch_size * steps, freeze_vit=True,
                                               paper_vit=paper_vit, regions=regions)
    model, opt = _model_and_optimizer(config, tokenizer)
    model_c = copy.deepcopy(model)
    opt_c = torch.optim.AdamW([p for p in model_c.parameters() if p.requires_grad], lr=1e-5)
    # what training.cache_vit_features computes once per scan
    t0 = time.perf_counter()
    cached_items = []
    for it in items:
        vol = to_input_layout(torch.cat([it["global"][None], it["texture"]]), config.input_layout)
        feats = model.visual.vit_features(vol).to(torch.float16)
        c = {k: v for k, v in it.items() if k not in ("global", "texture")}
        c["global_vit"], c["texture_vit"] = feats[0], feats[1:]
        cached_items.append(c)
    feature_s = (time.perf_counter() - t0) / len(items)
    feature_bytes = sum(c["global_vit"].nbytes + c["texture_vit"].nbytes for c in cached_items) / len(items)
    groups = [slice(i, i + batch_size) for i in range(0, len(items), batch_size)]
    with torch.no_grad():  # same weights, same batch: losses agree to fp16 rounding of the features
        model.eval(), model_c.eval()
        b = make_batch(items[groups[0]], tokenizer, config)
        bc = make_batch(cached_items[groups[0]], tokenizer, config)
        loss_diff = abs(float(model(**model_inputs(b, "cpu")).loss) - float(model_c(**model_inputs(bc, "cpu")).loss))
        model.train(), model_c.train()
    _train_step(model, opt, model_inputs(make_batch(items[groups[0]], tokenizer, config), "cpu"))  # warm-up
    _train_step(model_c, opt_c, model_inputs(make_batch(cached_items[groups[0]], tokenizer, config), "cpu"))
    base_s, ours_s = [], []
    for g in groups:
        base_s.append(_train_step(model, opt, model_inputs(make_batch(items[g], tokenizer, config), "cpu")))
        ours_s.append(_train_step(model_c, opt_c, model_inputs(make_batch(cached_items[g], tokenizer, config), "cpu")))
    return {
        "baseline_step_s": round(statistics.median(base_s), 4),
        "step_s": round(statistics.median(ours_s), 4),
        "ratio": round(statistics.median(base_s) / statistics.median(ours_s), 2),
        "baseline_samples_per_s": round(batch_size * len(base_s) / sum(base_s), 3),
        "samples_per_s": round(batch_size * len(ours_s) / sum(ours_s), 3),
        "feature_seconds_per_scan": round(feature_s, 4),
        "feature_bytes_per_scan": int(feature_bytes),
        "first_loss_abs_diff": loss_diff,
        "batch_size": batch_size,
        "regions_per_sample": len(items[0]["regions"]),
        "steps": len(groups),
        "preset": "tiny" + (" with RadFM's ViT" if paper_vit else ""),
        "input_size": list(config.input_size),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "cpu_count": os.cpu_count(),
    }


def cli_padding(args) -> int:
    result = bench_padding(batch_size=args.batch_size, steps=args.steps, threads=args.threads)
    _write_result(result, args.out)
    log.info("padding: %.0f tokens/s padded to the longest vs %.0f padded to %d: ratio %.1f",
             result["tokens_per_s"], result["baseline_tokens_per_s"], PAD_TO, result["ratio"])
    return 0


def cli_frozen(args) -> int:
    result = bench_frozen(batch_size=args.batch_size, steps=args.steps, paper_vit=args.paper_vit, threads=args.threads)
    _write_result(result, args.out)
    log.info("frozen ViT: %.3f s per step on cached features vs %.3f s running the ViT: ratio %.2f",
             result["step_s"], result["baseline_step_s"], result["ratio"])
    return 0
