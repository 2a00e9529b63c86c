"""Stand-ins for the external programs that cannot run here (house rule: named as such, speaking the real
protocol): SAT's checkout (a program reading and writing SAT's file formats), the folder of SAT's text encoder,
and a `vllm` program that serves the local OpenAI-compatible stand-in (tests/openai_standin.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

# A stand-in for SAT's checkout: inference.py reads the jsonl and writes outputs the way SAT's code does
# (nibabel load; RAS orientation and 1 x 1 x 3 mm required as given, since SAT's Orientationd/Spacingd leave
# such an input alone; crop to voxels > 0; per prompt a 0/1 float array with an identity affine). It
# "segments" by HU thresholds, so that the test knows the answer: written independently of reg2rg.
FAKE_SAT_INFERENCE = '''
import argparse, json, os
import nibabel as nib
import numpy as np

THRESHOLDS = {"heart": (20, 80), "sternum": (200, 4000), "liver": (50, 70)}

p = argparse.ArgumentParser()
p.add_argument("--rcd_dir")
p.add_argument("--datasets_jsonl")
args, _ = p.parse_known_args()
assert os.environ.get("LOCAL_RANK") == "0"  # started by torchrun
# SAT's Knowledge_Encoder loads AutoModel.from_pretrained("FremyCompany/BioLORD-2023-C"): a local folder of that
# name in the working directory, with the hub switched off
assert os.path.isfile(os.path.join("FremyCompany", "BioLORD-2023-C", "config.json")), os.getcwd()
assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"
for line in open(args.datasets_jsonl):
    d = json.loads(line)
    img = nib.load(d["image"])
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S"), img.affine
    assert np.allclose(img.header.get_zooms(), (1, 1, 3)), img.header.get_zooms()
    fg = np.argwhere(arr > 0)
    lo, hi = fg.min(0), fg.max(0) + 1
    crop = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    sample_id = d["image"].split("/")[-1].replace(".nii.gz", "")
    out = os.path.join(args.rcd_dir, d["dataset"], "seg_" + sample_id)
    os.makedirs(out, exist_ok=True)
    results = np.zeros(crop.shape)
    for j, label in enumerate(d["label"]):
        a, b = THRESHOLDS.get(label, (1e9, 1e9))
        pred = ((crop > a) & (crop < b)).astype(np.float32)
        results += pred * (j + 1)
        nib.save(nib.Nifti1Image(pred, np.eye(4)), os.path.join(out, label + ".nii.gz"))
    folder = os.path.join(args.rcd_dir, d["dataset"])
    nib.save(nib.Nifti1Image(results, np.eye(4)), os.path.join(folder, "seg_" + sample_id + ".nii.gz"))
    nib.save(nib.Nifti1Image((crop - crop.mean()) / crop.std(), np.eye(4)),
             os.path.join(folder, "img_" + sample_id + ".nii.gz"))
'''


def sat_standin_checkout(sat_repo: Path, program: str = FAKE_SAT_INFERENCE) -> Path:
    """A SAT checkout whose inference.py is `program` (the stand-in program by default), with SAT's U-Net
    package, and beside it `BioLORD-2023-C/`, a folder standing for the local copy of SAT's text encoder model."""
    (sat_repo / "dynamic_network_architectures").mkdir(parents=True)
    (sat_repo / "dynamic_network_architectures" / "__init__.py").write_text("")
    (sat_repo / "inference.py").write_text(program)
    biolord_standin(sat_repo.parent / "BioLORD-2023-C")
    return sat_repo


def biolord_standin(folder: Path) -> Path:
    """A folder standing for SAT's text encoder model (BioLORD-2023-C): a config.json, as SAT checks."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "mpnet"}')
    return folder


def vllm_standin_bin(fake_bin: Path) -> Path:
    """A folder with a `vllm` program that checks its `serve` arguments and runs the local OpenAI stand-in
    (tests/openai_standin.py) on the port it was given: put it first on the PATH."""
    fake_bin.mkdir(parents=True)
    standin = Path(__file__).resolve().parent / "openai_standin.py"
    (fake_bin / "vllm").write_text(
        f"#!{sys.executable}\n"
        "import sys, subprocess\n"
        "args = sys.argv[1:]\n"
        "assert args[0] == 'serve' and '--served-model-name' in args, args\n"
        "port = args[args.index('--port') + 1]\n"
        f"sys.exit(subprocess.call([{sys.executable!r}, {str(standin)!r}, '--port', port, '--startup-delay', '1']))\n")
    (fake_bin / "vllm").chmod(0o755)
    return fake_bin
