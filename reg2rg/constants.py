"""Fixed vocabularies of the method: the 10 regions and the 18 CT-RATE abnormality labels.

Everything that needs a region index or a label column takes it from here.
"""

# The 10 anatomical regions, in the order RadGenome-ChestCT spells and the model indexes them.
# Region i of the model (1-based in prompts) is REGIONS[i - 1].
REGIONS: tuple[str, ...] = (
    "abdomen",
    "bone",
    "breast",
    "esophagus",
    "heart",
    "lung",
    "mediastinum",
    "pleura",
    "thyroid",
    "trachea and bronchie",
)

# The 18 CT-RATE abnormality labels, in the order of CT-RATE's label files.
ABNORMALITY_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

# Hounsfield window of the model input: clamp, then (x - HU_CENTER) / HU_SCALE.
HU_MIN, HU_MAX = -1000.0, 200.0
HU_CENTER, HU_SCALE = -400.0, 600.0
# Value written outside a region mask in region crops (air).
OUTSIDE_HU = -1024

# Region masks are stored as one uint16 label file per scan: bit i set <=> voxel in REGIONS[i].
MASK_DTYPE = "uint16"

# Voxel order of the model's input arrays [X, Y, Z] (model config `input_layout`; reg2rg.dataset.to_input_layout):
# "lps" indices run to the patient's left, posterior and superior (the ingested volume's, the default); "ras"
# to the right, anterior and superior (x and y reversed: what nibabel gives for a file stored RAS+).
INPUT_LAYOUTS = ("lps", "ras")

# The run record beside a trained model (reg2rg.train writes it, reg2rg.generate reads it).
RUN_CONFIG_FILE = "run_config.json"


def region_index(name: str) -> int:
    """0-based index of a top-level region name (case-insensitive); ValueError naming the region if unknown."""
    key = name.strip().lower()
    for i, r in enumerate(REGIONS):
        if r == key:
            return i
    raise ValueError(f"unknown region name {name!r}; known regions: {', '.join(REGIONS)}")
