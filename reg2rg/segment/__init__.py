"""The segmentation stage: region masks for data sets that come without them.

Backends (config `datasets.<name>.segmentation.backend`):
- `provided`: masks already on disk (RadGenome layout), imported by the masks stage (reg2rg.masks).
- `sat`: SAT (zhaoziheng/SAT) run from the user's checkout and checkpoint; `sat` prepares its input,
  writes its jsonl and imports its output onto the ingested grid in physical space (`sat.py`).
- `sat_standin`: SAT-format files written by the demo generator in place of a SAT run (`demo_ctrg`),
  imported exactly like SAT's.

`derived.py` makes the regions SAT has no class for from other regions' masks (the pleura: a shell around the
lungs), at import. `stage.py` runs a backend over every scan of an inventory with a status row each.
"""
