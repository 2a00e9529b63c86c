"""The demo data set on disk: NIfTI volumes and masks, DICOM series (made-up patient identity), the layouts'
report and label tables, the SAT stand-in outputs, and `make_demo_dataset` / the `reg2rg demo-data` command
(the layouts are described in reg2rg.demo).
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from reg2rg.constants import ABNORMALITY_LABELS, REGIONS
from reg2rg.demo.phantom import DEFAULT_SHAPE, HU_MAX_STORED, HU_MIN_STORED, IDENTITY_DIRECTION, PhantomGeometry
from reg2rg.demo.plan import DemoCase, plan_dataset, render_case

log = logging.getLogger(__name__)

SUMMARY_FILE = "demo_summary.json"


def _image(array: np.ndarray, geometry: PhantomGeometry):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def write_nifti(array: np.ndarray, geometry: PhantomGeometry, path: str | Path) -> None:
    """Write an array [z, y, x] as compressed NIfTI with the geometry in its header (deterministic bytes)."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_image(array, geometry), str(path), useCompression=True)


def write_dicom_series(hu: np.ndarray, geometry: PhantomGeometry, folder: str | Path, *, patient: dict,
                       uid_entropy: Sequence[str], sex: str = "O", description: str = "CHEST 3mm") -> list[Path]:
    """Write a CT volume [z, y, x] in HU as one DICOM file per axial slice (IM0001.dcm from the lowest slice up).

    CT Image Storage, explicit VR little endian, signed 16-bit stored values with RescaleSlope 1 and
    RescaleIntercept -1024 (stored = HU + 1024 >= 0). ImagePositionPatient / ImageOrientationPatient /
    PixelSpacing follow the geometry (LPS, identity direction). UIDs come from pydicom's generate_uid with
    uid_entropy, so the same inputs give byte-identical files. `patient` holds the made-up identity:
    PatientName, PatientID, PatientBirthDate, AccessionNumber, StudyDate, StudyTime."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    if tuple(geometry.direction) != IDENTITY_DIRECTION:
        raise ValueError("write_dicom_series: only identity-direction volumes are supported")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entropy = [str(e) for e in uid_entropy]
    study_uid = generate_uid(entropy_srcs=entropy + ["study"])
    series_uid = generate_uid(entropy_srcs=entropy + ["series"])
    frame_uid = generate_uid(entropy_srcs=entropy + ["frame"])
    stored = (np.clip(hu, HU_MIN_STORED, HU_MAX_STORED).astype(np.int32) + 1024).astype("<i2")
    nz, ny, nx = hu.shape
    sx, sy, sz = geometry.spacing
    ox, oy, oz = geometry.origin
    paths = []
    for k in range(nz):
        sop_uid = generate_uid(entropy_srcs=entropy + ["image", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient["StudyDate"]
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = patient["StudyTime"]
        ds.AccessionNumber = patient["AccessionNumber"]
        ds.Modality = "CT"
        ds.Manufacturer = "reg2rg demo phantom"
        ds.InstitutionName = "Demo Hospital"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = description
        ds.PatientName = patient["PatientName"]
        ds.PatientID = patient["PatientID"]
        ds.PatientBirthDate = patient["PatientBirthDate"]
        ds.PatientSex = sex
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{sz:g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        z = oz + k * sz
        ds.ImagePositionPatient = [f"{ox:.3f}", f"{oy:.3f}", f"{z:.3f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.3f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]  # row spacing (y), column spacing (x)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


# Top-level entries each layout writes (removed before writing, so a rerun leaves no stale case behind).
_LAYOUT_ENTRIES = {
    "radgenome": ("train_preprocessed", "valid_preprocessed", "train_region_mask", "valid_region_mask",
                  "train_region_report.csv", "validation_region_report.csv", "multi_abnormality_labels",
                  SUMMARY_FILE),
    "ctrg": ("images", "annotation.json", "labels.csv", "sat_standin", SUMMARY_FILE),
}
_REPORT_CSV = {"train": "train_region_report.csv", "valid": "validation_region_report.csv"}


def _clear_previous(out: Path, layout: str) -> None:
    for name in _LAYOUT_ENTRIES[layout]:
        p = out / name
        if p.is_dir():
            log.info("removing the previous %s", p)
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _write_radgenome_case(out: Path, case: DemoCase, rows: dict, label_rows: dict) -> None:
    p = case.plan
    split, n = p.source_split, p.case_id.split("_")[1]
    volume = out / f"{split}_preprocessed" / f"{split}_{n}" / f"{split}_{n}a" / f"{p.case_id}.nii.gz"
    write_nifti(case.hu, case.geometry, volume)
    mask_dir = out / f"{split}_region_mask" / f"seg_{p.case_id}"
    for region in REGIONS:
        if region in p.missing_masks:
            continue
        mask = case.masks[region].astype(np.uint8)
        if region in p.empty_masks:
            mask = np.zeros_like(mask)
        write_nifti(mask, case.geometry, mask_dir / f"{region}.nii.gz")
    name = f"{p.case_id}.nii.gz"
    rows[split].extend(case.report.csv_rows(name))
    label_rows[split].append([name] + [case.report.labels[lab] for lab in ABNORMALITY_LABELS])


def _write_ctrg_case(out: Path, case: DemoCase, seed: int, annotation: dict, label_rows: list) -> None:
    p = case.plan
    write_dicom_series(case.hu, case.geometry, out / "images" / p.case_id, patient=p.patient,
                       uid_entropy=["reg2rg-demo", str(seed), p.case_id], sex=case.geometry.anatomy["sex"],
                       description=f"CHEST {case.geometry.spacing[2]:g}mm")
    annotation[p.source_split].append({"id": p.case_id, "report": case.report.whole,
                                       "image_path": f"images/{p.case_id}"})
    label_rows.append([p.case_id] + [case.report.labels[lab] for lab in ABNORMALITY_LABELS])


SAT_STANDIN_DIR = "sat_standin"
SAT_STANDIN_DATASET = "reg2rg"  # the `dataset` of SAT's jsonl: SAT writes {rcd_dir}/{dataset}/seg_{id}/
SAT_STANDIN_SPACING = (1.0, 1.0, 3.0)
_SAT_STANDIN_README = """A STAND-IN FOR A SAT RUN, not SAT output.

Written by reg2rg's demo generator from the phantoms' true region masks, in the layout and geometry SAT's
inference writes (reg2rg/segment/sat.py): {dataset}/seg_<id>/<prompt>.nii.gz per prompt and
{dataset}/seg_<id>.nii.gz, arrays on SAT's cropped RAS 1 x 1 x 3 mm grid with an identity affine. Each
region's mask is split among (at most two of) its default prompts, so that importing it exercises the
union. The pleura has no file: SAT has no pleura class and is not asked for one; the importer derives the
pleura from the lung masks (reg2rg.segment.derived). The grid is the one SAT would see for the volume reg2rg ingests from images/<id> at 1 x 1 x 3 mm;
standin.json records each case's crop so the importer can refuse files made for another input.
"""


def write_sat_standin(out_dir: str | Path, case_id: str, masks: dict[str, np.ndarray], geometry: PhantomGeometry,
                      spacing: Sequence[float] = SAT_STANDIN_SPACING, dataset: str = SAT_STANDIN_DATASET,
                      prompts: dict | None = None) -> dict:
    """A stand-in for a SAT run on one demo CTRG case: SAT-format outputs of its true masks.

    Ingests the case's DICOM series (`{out_dir}/images/{case_id}`) exactly as the workflow will (reg2rg.ingest
    at `spacing`, into a temporary folder), prepares SAT's input from it (reg2rg.segment.sat), puts each
    true mask (on the phantom grid, `geometry`) onto SAT's cropped RAS grid and writes it under
    `{out_dir}/sat_standin/{dataset}/` as SAT does, one file per prompt: none for regions without prompts
    (by default the pleura, which the importer derives from the lung). Returns the case's SAT input record."""
    import tempfile

    from reg2rg.ingest import ingest
    from reg2rg.segment import sat

    out = Path(out_dir)
    root = out / SAT_STANDIN_DIR
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text(_SAT_STANDIN_README.format(dataset=dataset))
    mapping = sat.region_prompts(prompts)
    with tempfile.TemporaryDirectory(prefix="sat-standin-") as tmp:
        vol = Path(tmp) / f"{case_id}.nii.gz"
        ingest(out / "images" / case_id, vol, spacing=tuple(spacing))
        record = sat.prepare_sat_input(vol, Path(tmp) / "in" / f"{case_id}.nii.gz", Path(tmp) / "in.json", case_id)
    labels: dict[str, np.ndarray] = {}
    for region in REGIONS:
        names = mapping[region][:2]
        if not names:
            continue
        img = _image(masks[region].astype(np.uint8), geometry)
        cropped = sat.to_sat_grid(img, record)
        # split among the prompts along the cranio-caudal axis (RAS k): their union is the region
        cut = int(np.median(np.nonzero(cropped.any(axis=(0, 1)))[0])) if cropped.any() and len(names) > 1 else None
        for j, name in enumerate(names):
            piece = cropped.copy()
            if cut is not None:
                if j == 0:
                    piece[:, :, cut:] = 0
                else:
                    piece[:, :, :cut] = 0
            labels[name] = labels.get(name, np.zeros_like(piece)) | piece
    sat.write_sat_output(root, dataset, case_id, {k: v.astype(np.uint8) for k, v in labels.items()})
    index_path = root / "standin.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[case_id] = {"crop": record["crop"], "shape_ras": record["sat_input"]["shape_ras"],
                      "spacing": list(spacing), "prompts": {r: mapping[r][:2] for r in REGIONS}}
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    return record


def make_demo_dataset(layout: str, out_dir: str | Path, cases: int = 12, seed: int = 0,
                      test_fraction: float = 0.25, shape: Sequence[int] | None = None,
                      sat_standin: bool = True, workers: int = 1, report_style: str = "varied") -> dict:
    """Write a synthetic data set in the RadGenome-ChestCT ('radgenome') or CTRG-Chest-548K ('ctrg') layout
    (see the module docstring) and return its summary:

      layout, seed, cases, shape (nominal), splits {source split: [case ids]}, findings {case: [kinds]},
      labels {case: {label: 0/1}}, missing_masks / empty_masks {case: [regions]} (radgenome),
      regions_without_text {case: [regions]}, geometry {case: {size, spacing, origin, direction}},
      patient_names, patient_ids, accession_numbers (ctrg: the made-up identities in the DICOM headers;
      they are not written to demo_summary.json).

    ctrg with `sat_standin`: also `{out}/sat_standin/`, SAT-format outputs made from the true masks in place
    of a SAT run (see write_sat_standin).

    report_style: "varied" (several phrasings per statement, measurements) or "fixed" (the text is a function
    of the findings; the workflow's demo): see reg2rg.demo.report_text.compose_report.

    workers: processes that draw the cases (each case has its own random streams, so the data set is the same
    for any number); the files are written in case order by this process."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    out = Path(out_dir)
    plans = plan_dataset(layout, cases, seed, test_fraction, shape)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, layout)
    split_names = ("train", "valid") if layout == "radgenome" else ("train", "test")
    summary: dict = {
        "layout": layout, "seed": int(seed), "cases": int(cases), "report_style": report_style,
        "shape": list(shape if shape is not None else DEFAULT_SHAPE),
        "splits": {s: [p.case_id for p in plans if p.source_split == s] for s in split_names},
        "findings": {}, "labels": {}, "missing_masks": {}, "empty_masks": {}, "regions_without_text": {},
        "geometry": {},
    }
    report_rows: dict[str, list] = {s: [] for s in split_names}
    label_rows: dict[str, list] = {s: [] for s in split_names}
    annotation: dict[str, list] = {s: [] for s in split_names}
    ctrg_labels: list = []
    log.info("writing %d synthetic %s cases (seed %d) to %s", cases, layout, seed, out)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    n = len(plans)
    rendered = (pool.map(render_case, plans, [seed] * n, [report_style] * n) if pool
                else (render_case(p, seed, report_style) for p in plans))
    for plan, case in tqdm(zip(plans, rendered), total=len(plans), desc=f"demo {layout}", unit="scan", disable=None):
        if layout == "radgenome":
            _write_radgenome_case(out, case, report_rows, label_rows)
        else:
            _write_ctrg_case(out, case, seed, annotation, ctrg_labels)
            if sat_standin:
                write_sat_standin(out, plan.case_id, case.masks, case.geometry)
        summary["findings"][plan.case_id] = [f["kind"] for f in case.findings]
        summary["labels"][plan.case_id] = case.report.labels
        if plan.missing_masks:
            summary["missing_masks"][plan.case_id] = list(plan.missing_masks)
        if plan.empty_masks:
            summary["empty_masks"][plan.case_id] = list(plan.empty_masks)
        no_text = [r for r in REGIONS if r not in case.report.sentences]
        if no_text:
            summary["regions_without_text"][plan.case_id] = no_text
        summary["geometry"][plan.case_id] = case.geometry.to_dict()

    if pool:
        pool.shutdown()
    header_labels = list(ABNORMALITY_LABELS)
    if layout == "radgenome":
        for split in split_names:
            _write_csv(out / _REPORT_CSV[split], ("Volumename", "Anatomy", "Sentence"), report_rows[split])
            _write_csv(out / "multi_abnormality_labels" / f"{split}_predicted_labels.csv",
                       ["VolumeName"] + header_labels, label_rows[split])
    else:
        with open(out / "annotation.json", "w", encoding="utf-8") as fh:
            json.dump(annotation, fh, indent=1)
            fh.write("\n")
        _write_csv(out / "labels.csv", ["id"] + header_labels, ctrg_labels)

    with open(out / SUMMARY_FILE, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    summary["patient_names"] = [p.patient["PatientName"] for p in plans if p.patient]
    summary["patient_ids"] = [p.patient["PatientID"] for p in plans if p.patient]
    summary["accession_numbers"] = [p.patient["AccessionNumber"] for p in plans if p.patient]
    log.info("demo data set written: %s", ", ".join(f"{s}: {len(v)}" for s, v in summary["splits"].items()))
    if summary["missing_masks"] or summary["empty_masks"]:
        log.info("region mask files left out: %s; written empty: %s",
                 summary["missing_masks"] or "none", summary["empty_masks"] or "none")
    return summary


def cli(args) -> int:
    """`reg2rg demo-data`: see make_demo_dataset."""
    make_demo_dataset(args.layout, args.out, cases=args.cases, seed=args.seed, test_fraction=args.test_fraction,
                      shape=tuple(args.shape) if args.shape else None, report_style=args.report_style)
    return 0
