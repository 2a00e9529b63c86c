"""Synthetic demo data: chest CT phantoms in Hounsfield units with the 10 region masks, region-by-region
reports that describe the findings placed in the image, and the 18 CT-RATE labels as ground truth.

Two layouts (`make_demo_dataset`):

radgenome   mirrors RadGenome-ChestCT (source splits `train` and `valid`):
              {out}/{split}_preprocessed/{split}_{n}/{split}_{n}a/{split}_{n}_a_1.nii.gz   int16 HU
              {out}/{split}_region_mask/seg_{split}_{n}_a_1/{region}.nii.gz              uint8 0/1
                (some region files are missing, some are empty, as in the real data)
              {out}/train_region_report.csv, {out}/validation_region_report.csv        Volumename,Anatomy,Sentence
                (per scan: one whole-report row with empty Anatomy, one row per region holding all of the
                region's sentences, and finer rows `region/.../part` repeating the sentences about that part,
                as RadGenome's multi-granularity reports do; some normal regions have no text at all)
              {out}/multi_abnormality_labels/{train,valid}_predicted_labels.csv        VolumeName + 18 labels
ctrg        mirrors CTRG-Chest-548K as users hold it (splits `train` and `test`):
              {out}/images/{case_id}/IM0001.dcm ...   one CT DICOM series per scan (made-up patient identity)
              {out}/annotation.json                   {"train": [{"id", "report", "image_path"}], "test": [...]}
              {out}/labels.csv                        id + 18 labels (ground truth for evaluation)
Both layouts also get `{out}/demo_summary.json`: what was generated (splits, findings, labels, mask faults,
geometry), never the made-up patient identifiers.

Where each part lives:
- `phantom`: the chest CT phantom (geometry, anatomy, tissues in HU, the findings painted in) - `make_phantom`.
- `report_text`: the region-by-region report of a phantom's findings and its labels - `compose_report`.
- `plan`: what every case of a data set will be (ids, splits, shapes, findings, mask faults) - `plan_dataset`;
  `render_case` draws one planned case. Everything is deterministic for a seed: each case draws from its own
  numpy Generators seeded with (seed, case number).
- `writers`: the files (NIfTI, DICOM, CSV/JSON tables, the SAT stand-in) - `make_demo_dataset`, the
  `reg2rg demo-data` command (`cli`).
"""
from reg2rg.demo.phantom import (DEFAULT_SHAPE, DEFAULT_SPACING, FINDING_KINDS, FINDINGS, HU_AIR, IDENTITY_DIRECTION,
                                  PhantomGeometry, draw_findings, make_phantom)
from reg2rg.demo.plan import LAYOUTS, CasePlan, DemoCase, plan_dataset, render_case
from reg2rg.demo.report_text import DemoReport, compose_report, write_report
from reg2rg.demo.writers import SUMMARY_FILE, cli, make_demo_dataset, write_dicom_series, write_nifti, write_sat_standin

__all__ = ["CasePlan", "DEFAULT_SHAPE", "DEFAULT_SPACING", "DemoCase", "DemoReport", "FINDINGS", "FINDING_KINDS",
           "HU_AIR", "IDENTITY_DIRECTION", "LAYOUTS", "PhantomGeometry", "SUMMARY_FILE", "cli", "compose_report",
           "draw_findings", "make_demo_dataset", "make_phantom", "plan_dataset", "render_case", "write_dicom_series",
           "write_nifti", "write_report", "write_sat_standin"]
