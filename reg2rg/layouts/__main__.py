"""`python -m reg2rg.layouts conform ROOT OUT_DIR [--spacing X Y Z]`: conform a CTRG-layout data set whose
NIfTI volumes are stored slices first (reg2rg.layouts.ctrg.main). Here rather than as `python -m
reg2rg.layouts.ctrg`: the package imports that module (for LAYOUTS), so runpy would run it a second time."""
from reg2rg.layouts.ctrg import main

raise SystemExit(main())
