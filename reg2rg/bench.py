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
