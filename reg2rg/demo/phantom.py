"""The demo's chest CT phantom: anatomy in HU with the 10 region masks and the findings placed in it.

Geometry: every phantom is built in ITK's LPS world with identity direction (array [z, y, x]; x to the
patient's left, y posterior, z superior), at about 1 x 1 x 3 mm. Anatomy is defined in millimetres relative
to the body, so volumes of any size and spacing hold the same anatomy. `make_phantom` draws everything from
the case's numpy Generator; `draw_findings` the random set of finding kinds (FINDINGS).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from reg2rg.constants import REGIONS

# --------------------------------------------------------------------------------------------------------------
# Grid defaults, tissues (HU) and the findings a phantom can hold
# --------------------------------------------------------------------------------------------------------------

DEFAULT_SHAPE: tuple[int, int, int] = (192, 160, 56)  # nominal voxels, x y z
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 3.0)  # mm, x y z
IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# Hounsfield units of the tissues.
HU_AIR = -1000
HU_MIN_STORED = -1024  # lowest value CT can store (intercept -1024, stored 0)
HU_MAX_STORED = 3071
HU_LUNG = -860
HU_LUNG_DEPENDENT_GRADIENT = 40  # posterior (dependent) lung is this much denser than anterior lung
HU_EMPHYSEMA = -965
HU_BULLA = -995
HU_PLEURA = -450  # thin pleural line, partial volume with lung
HU_FAT = -100
HU_MEDIASTINAL_FAT = -90
HU_SOFT_TISSUE = 40
HU_MUSCLE = 48
HU_BLOOD = 45
HU_MYOCARDIUM = 38
HU_FLUID = 12
HU_LIVER = 58
HU_SPLEEN = 48
HU_THYROID = 95
HU_GLANDULAR = 25
HU_LYMPH_NODE = 35
HU_NODULE = 30
HU_DISC = 80
HU_CSF = 8
HU_CANCELLOUS_BONE = 260
HU_CORTICAL_BONE = 750
HU_RIB = 480
HU_CALCIFICATION = (450, 900)
HU_CATHETER = 900
HU_METAL = 2500
HU_TABLE = 150
NOISE_SD_HU = 14.0
BLUR_SIGMA_MM = 0.5  # partial volume: a light Gaussian blur before the noise

# Findings the phantom can hold: kind -> (CT-RATE label, region whose text describes it). Each is drawn large
# enough to show at the tiny preset's 64 x 64 x 16 input (about 3 x 2.5 x 10 mm per voxel): nodules 14-30 mm,
# enlarged nodes 16-26 mm, effusions 18-35 mm deep, pericardial fluid 10-20 mm, hearts 1.3-1.5 x, plaques 4 mm
# (docs/evaluation.md, "The demo's numbers").
FINDINGS: dict[str, tuple[str, str]] = {
    "lung_nodule": ("Lung nodule", "lung"),
    "emphysema": ("Emphysema", "lung"),
    "consolidation": ("Consolidation", "lung"),
    "pleural_effusion": ("Pleural effusion", "pleura"),
    "cardiomegaly": ("Cardiomegaly", "heart"),
    "pericardial_effusion": ("Pericardial effusion", "heart"),
    "arterial_wall_calcification": ("Arterial wall calcification", "mediastinum"),
    "lymphadenopathy": ("Lymphadenopathy", "mediastinum"),
    "hiatal_hernia": ("Hiatal hernia", "esophagus"),
    "medical_material": ("Medical material", "mediastinum"),  # region depends on the device (see below)
}
FINDING_KINDS: tuple[str, ...] = tuple(FINDINGS)
# Each finding kind is drawn on its own, so that every kind has about PROB_FINDING x cases examples (the tiny
# model learns a finding from the scans that show it; the 18 labels are scored over all of them).
PROB_FINDING = 0.3

_LABEL_OF = {r: i + 1 for i, r in enumerate(REGIONS)}  # label map value of each region; 0 = none


# --------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhantomGeometry:
    """Grid of a phantom in ITK's LPS world; sizes and spacings in ITK order [x, y, z]."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    anatomy: dict = field(default_factory=dict, compare=False)  # sex, body size, levels (for reports, tests)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


class _Frame:
    """Voxel-centre coordinates in mm relative to the body: u (+ = patient left), v (+ = posterior),
    w (+ = superior, 0 at the scan's centre), and t, the anatomical height (0 bottom of the scan, 1 top)."""

    def __init__(self, geometry: PhantomGeometry, body_center_xy: tuple[float, float], t_shift: float):
        nx, ny, nz = geometry.size
        sx, sy, sz = geometry.spacing
        ox, oy, oz = geometry.origin
        self.shape = (nz, ny, nx)
        self.u1 = (ox + sx * np.arange(nx) - body_center_xy[0]).astype(np.float32)
        self.v1 = (oy + sy * np.arange(ny) - body_center_xy[1]).astype(np.float32)
        self.span = float(sz * max(nz - 1, 1))
        self.w1 = (sz * np.arange(nz) - self.span / 2).astype(np.float32)
        self.t_shift = t_shift
        self.u = self.u1[None, None, :]
        self.v = self.v1[None, :, None]
        self.w = self.w1[:, None, None]
        self.t = (self.w / self.span + 0.5 + t_shift).astype(np.float32)
        self.spacing_zyx = (sz, sy, sx)

    def w_at(self, t: float) -> float:
        """w (mm) of anatomical height t."""
        return (t - self.t_shift - 0.5) * self.span

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=bool)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the voxels with lo <= (u, v, w) <= hi; None when empty."""
        sl = []
        for axis, a, b in ((self.w1, lo[2], hi[2]), (self.v1, lo[1], hi[1]), (self.u1, lo[0], hi[0])):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def sub(self, sl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, w) broadcastable arrays restricted to a box."""
        return (self.u1[sl[2]][None, None, :], self.v1[sl[1]][None, :, None], self.w1[sl[0]][:, None, None])

    def index_of(self, p: Sequence[float]) -> tuple[int, int, int]:
        """Nearest voxel (z, y, x) of a point (u, v, w), clipped into the grid."""
        return tuple(int(np.clip(np.abs(axis - c).argmin(), 0, len(axis) - 1))
                     for axis, c in ((self.w1, p[2]), (self.v1, p[1]), (self.u1, p[0])))

    def point_of(self, idx: Sequence[int]) -> tuple[float, float, float]:
        """(u, v, w) of voxel (z, y, x)."""
        return float(self.u1[idx[2]]), float(self.v1[idx[1]]), float(self.w1[idx[0]])


def _ellipsoid(f: _Frame, center: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid (centre and semi-axes in mm, u v w)."""
    out = f.zeros()
    semi = [max(float(s), 1e-3) for s in semi]
    sl = f.box([c - s for c, s in zip(center, semi)], [c + s for c, s in zip(center, semi)])
    if sl is None:
        return out
    u, v, w = f.sub(sl)
    out[sl] = ((u - center[0]) / semi[0]) ** 2 + ((v - center[1]) / semi[1]) ** 2 \
        + ((w - center[2]) / semi[2]) ** 2 <= 1.0
    return out


def _tube(f: _Frame, points: Sequence[Sequence[float]], radius: float | Sequence[float]) -> np.ndarray:
    """Voxels within `radius` mm of a polyline through `points` (u, v, w); one radius per segment allowed."""
    out = f.zeros()
    pts = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts) - 1,))
    for p0, p1, r in zip(pts[:-1], pts[1:], radii):
        sl = f.box(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
        if sl is None:
            continue
        u, v, w = f.sub(sl)
        seg = p1 - p0
        seg2 = float(seg @ seg) or 1e-9
        du, dv, dw = u - p0[0], v - p0[1], w - p0[2]
        s = np.clip((du * seg[0] + dv * seg[1] + dw * seg[2]) / seg2, 0.0, 1.0)
        d2 = (du - s * seg[0]) ** 2 + (dv - s * seg[1]) ** 2 + (dw - s * seg[2]) ** 2
        out[sl] |= d2 <= r * r
    return out


def _all_slices(f: _Frame, mask_yx: np.ndarray) -> np.ndarray:
    """A mask over (y, x) repeated on every slice."""
    return np.broadcast_to(mask_yx, f.shape).copy()


def _elliptic_cylinder(f: _Frame, center_uv: Sequence[float], semi_uv: Sequence[float],
                       t_range: tuple[float, float] = (-np.inf, np.inf)) -> np.ndarray:
    """Voxels inside an elliptic cylinder along z, between anatomical heights t_range."""
    inside = ((f.u - center_uv[0]) / semi_uv[0]) ** 2 + ((f.v - center_uv[1]) / semi_uv[1]) ** 2 <= 1.0
    return inside & (f.t >= t_range[0]) & (f.t <= t_range[1])


# --------------------------------------------------------------------------------------------------------------
# The phantom's anatomy
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Anatomy:
    """Per-case anatomical parameters in mm (u, v relative to the body centre) and heights t."""

    sex: str
    a: float  # body semi-axes
    b: float
    fat: float  # subcutaneous fat thickness
    muscle: float
    rib: float  # thickness of the rib band
    cav_v: float  # v of the thoracic cavity's centre (the posterior wall is thicker)
    ac: float  # cavity semi-axes
    bc: float
    k: float  # size relative to an adult chest (structure diameters scale with it)
    mediastinum_half: float
    dome_t: dict  # diaphragm dome height per side
    carina_t: float
    arch_t: float
    fissure_t: float
    horizontal_fissure_t: float
    spine_v: float
    spine_r: float
    esophagus_uv: tuple[float, float]
    esophagus_r: float
    trachea_uv: tuple[float, float]
    trachea_r: float
    aorta_r: float
    aorta_desc_uv: tuple[float, float]
    aorta_asc_uv: tuple[float, float]
    heart_center: tuple[float, float, float]
    heart_semi: tuple[float, float, float]
    rib_phase: float
    breast_semi_v: float


def _draw_anatomy(rng: np.random.Generator, f: _Frame, fov: tuple[float, float]) -> _Anatomy:
    a = 0.45 * fov[0] * rng.uniform(0.9, 1.0)
    b = 0.37 * fov[1] * rng.uniform(0.9, 1.0)
    k = a / 160.0
    fat = b * rng.uniform(0.06, 0.14)
    muscle = b * rng.uniform(0.08, 0.11)
    rib = b * 0.09
    wall = fat + muscle + rib
    cav_v = -0.12 * b
    ac, bc = a - wall, b - wall - 0.12 * b
    spine_r = 0.25 * bc
    spine_v = cav_v + bc - 0.2 * bc
    esophagus_r = max(7.0 * k, 2.5)
    esophagus_uv = (0.06 * ac, spine_v - spine_r - esophagus_r - 1.0)
    trachea_r = max(9.0 * k, 3.0)
    trachea_uv = (0.0, esophagus_uv[1] - esophagus_r - trachea_r - 1.5)
    aorta_r = max(12.0 * k, 3.0)
    dome_r = rng.uniform(0.26, 0.32)
    carina_t = rng.uniform(0.58, 0.64)
    heart_semi = (0.42 * ac, 0.48 * bc, 0.15 * f.span)
    heart_center = (0.16 * ac + rng.uniform(-0.03, 0.03) * ac,
                    cav_v - 0.3 * bc + rng.uniform(-0.03, 0.03) * bc,
                    f.w_at(rng.uniform(0.34, 0.39)))
    sex = "F" if rng.random() < 0.5 else "M"
    return _Anatomy(
        sex=sex, a=a, b=b, fat=fat, muscle=muscle, rib=rib, cav_v=cav_v, ac=ac, bc=bc,
        k=k, mediastinum_half=0.16 * ac,
        dome_t={"right": dome_r, "left": dome_r - rng.uniform(0.02, 0.05)},
        carina_t=carina_t, arch_t=carina_t + rng.uniform(0.07, 0.10),
        fissure_t=rng.uniform(0.46, 0.52), horizontal_fissure_t=carina_t - rng.uniform(0.10, 0.14),
        spine_v=spine_v, spine_r=spine_r, esophagus_uv=esophagus_uv, esophagus_r=esophagus_r,
        trachea_uv=trachea_uv, trachea_r=trachea_r, aorta_r=aorta_r,
        aorta_desc_uv=(0.22 * ac, spine_v - 0.35 * spine_r),
        aorta_asc_uv=(-0.05 * ac, cav_v - 0.3 * bc - 0.1 * bc),
        heart_center=heart_center, heart_semi=heart_semi,
        rib_phase=rng.uniform(0, 1), breast_semi_v=(0.2 if sex == "F" else 0.1) * b,
    )


class _Canvas:
    """The HU volume and the region label map being painted; later paint wins."""

    def __init__(self, f: _Frame, rng: np.random.Generator):
        self.f = f
        self.rng = rng
        self.hu = np.full(f.shape, float(HU_AIR), dtype=np.float32)
        self.label = np.zeros(f.shape, dtype=np.int8)

    def paint(self, mask: np.ndarray, hu: float | np.ndarray, region: str | None | bool = False,
              jitter: float = 0.0) -> None:
        """Set HU (a value, or a full-size array read at the mask) and, unless region is False, the label."""
        if not mask.any():
            return
        values = hu[mask] if isinstance(hu, np.ndarray) else np.float32(hu)
        if jitter:
            values = values + self.rng.normal(0.0, jitter, size=int(mask.sum())).astype(np.float32)
        self.hu[mask] = values
        if region is not False:
            self.label[mask] = 0 if region is None else _LABEL_OF[region]

    def region(self, name: str) -> np.ndarray:
        return self.label == _LABEL_OF[name]


def _diaphragm_w(f: _Frame, an: _Anatomy) -> np.ndarray:
    """w of the diaphragm surface over (v, u): two domes, deepest in the posterior costophrenic recesses."""
    domes = []
    for side, s in (("right", -1.0), ("left", 1.0)):
        du = (f.u[0] - s * 0.45 * an.ac) / an.ac
        dv = (f.v[0] - an.cav_v - 0.05 * an.bc) / an.bc
        domes.append(f.w_at(an.dome_t[side]) - 0.22 * f.span * (du ** 2 + dv ** 2))
    return np.maximum(domes[0], domes[1])[None]


def _body(f: _Frame, an: _Anatomy) -> np.ndarray:
    return _elliptic_cylinder(f, (0.0, 0.0), (an.a, an.b)) | _breast_volume(f, an)


def _breast_volume(f: _Frame, an: _Anatomy) -> np.ndarray:
    """Both breasts: ellipsoids on the anterior chest wall (larger when the phantom is female)."""
    out = f.zeros()
    semi_u = (0.26 if an.sex == "F" else 0.18) * an.a
    for s in (-1.0, 1.0):
        cu = s * 0.48 * an.a
        cv = -an.b * np.sqrt(1 - 0.48 ** 2)
        out |= _ellipsoid(f, (cu, cv, f.w_at(0.45)), (semi_u, an.breast_semi_v, 0.13 * f.span))
    return out & (f.v < 0)


def _paint_table(c: _Canvas, an: _Anatomy) -> None:
    """The scanner table: a curved plate under the patient (no region)."""
    f = c.f
    curve = an.b + 3.0 + 0.1 * (f.u / an.a) ** 2 * an.b
    plate = _all_slices(f, (f.v >= curve) & (f.v <= curve + 3.0) & (np.abs(f.u) < 1.05 * an.a))
    c.paint(plate, HU_TABLE, None, jitter=20)


def _paint_body_wall(c: _Canvas, an: _Anatomy) -> None:
    """Skin and subcutaneous fat, then the chest wall muscles (no region: the body wall)."""
    f = c.f
    c.paint(_body(f, an), HU_FAT, None, jitter=8)
    muscle = _elliptic_cylinder(f, (0.0, 0.0), (an.a - an.fat, an.b - an.fat))
    c.paint(muscle, HU_MUSCLE, None, jitter=6)


def _paint_cavity(c: _Canvas, an: _Anatomy, below: np.ndarray) -> np.ndarray:
    """The thoracic cavity filled with mediastinal fat (central part labelled mediastinum); returns it."""
    f = c.f
    cavity = _elliptic_cylinder(f, (0.0, an.cav_v), (an.ac, an.bc))
    central = cavity & ~below & (np.abs(f.u) < 0.35 * an.ac)
    c.paint(cavity & ~below, HU_SOFT_TISSUE, None, jitter=6)
    c.paint(central, HU_MEDIASTINAL_FAT, "mediastinum", jitter=8)
    return cavity


def _paint_abdomen(c: _Canvas, an: _Anatomy, cavity: np.ndarray, below: np.ndarray) -> None:
    """Upper abdomen under the diaphragm: fat, liver (right), stomach with an air-fluid level and spleen (left)."""
    f = c.f
    abdomen = cavity & below
    c.paint(abdomen, HU_FAT, "abdomen", jitter=8)
    liver = abdomen & (f.u < 0.15 * an.ac + 0.1 * (f.v - an.cav_v))
    c.paint(liver, HU_LIVER, "abdomen", jitter=5)
    dome_l = f.w_at(an.dome_t["left"])
    st_c = (0.42 * an.ac, an.cav_v - 0.25 * an.bc, dome_l - 0.11 * f.span)
    st_semi = (0.3 * an.ac, 0.42 * an.bc, 0.12 * f.span)
    stomach = _ellipsoid(f, st_c, st_semi) & abdomen
    lumen = _ellipsoid(f, st_c, [s - 2.5 for s in st_semi]) & abdomen
    c.paint(stomach, HU_SOFT_TISSUE, "abdomen", jitter=5)
    c.paint(lumen, HU_FLUID, "abdomen", jitter=5)
    c.paint(lumen & (f.v < st_c[1] - 0.15 * an.bc), HU_AIR, "abdomen", jitter=5)
    spleen = _ellipsoid(f, (0.68 * an.ac, an.cav_v + 0.5 * an.bc, dome_l - 0.08 * f.span),
                        (0.2 * an.ac, 0.3 * an.bc, 0.1 * f.span)) & abdomen
    c.paint(spleen, HU_SPLEEN, "abdomen", jitter=5)


def _lung_space(f: _Frame, an: _Anatomy, cavity: np.ndarray, below: np.ndarray) -> dict[str, np.ndarray]:
    """The space each lung (with its pleura) takes before mediastinal structures are carved out."""
    out = {}
    apex_t = 0.97
    rz = (apex_t - 0.45) * f.span
    for side, s in (("right", -1.0), ("left", 1.0)):
        core = _ellipsoid(f, (s * 0.5 * an.ac, an.cav_v, f.w_at(0.45)), (0.62 * an.ac, 1.05 * an.bc, rz))
        medial = an.mediastinum_half * (1.0 + 0.6 * ((f.v - an.cav_v) / an.bc) ** 2)  # concave medial border
        out[side] = core & cavity & ~below & (s * f.u > medial)
    return out


def _paint_lungs(c: _Canvas, an: _Anatomy, space: dict[str, np.ndarray]) -> None:
    """Aerated lung, slightly denser posteriorly (dependent), with a little texture."""
    f = c.f
    gradient = HU_LUNG + HU_LUNG_DEPENDENT_GRADIENT * np.clip((f.v - an.cav_v) / an.bc, -1, 1) / 2
    hu = np.broadcast_to(gradient, f.shape).astype(np.float32)
    for side in ("right", "left"):
        c.paint(space[side], hu, "lung", jitter=15)


def _paint_lung_vessels(c: _Canvas, an: _Anatomy, lungs: np.ndarray) -> None:
    """Branching pulmonary vessels from each hilum, thinning toward the periphery (inside the lungs only)."""
    f = c.f
    rng = c.rng
    vessels = f.zeros()
    for s in (-1.0, 1.0):
        hilum = np.array([s * (an.mediastinum_half + 0.12 * an.ac), an.cav_v + 0.05 * an.bc,
                          f.w_at(an.carina_t - 0.06)])
        stack = [(hilum, None, max(3.0 * an.k, 1.6), 0)]
        while stack:
            start, parent_dir, radius, depth = stack.pop()
            n_children = 5 if depth == 0 else 2
            for _ in range(n_children):
                d = rng.normal(size=3) * np.array([0.6, 0.8, 1.2]) + np.array([s * 1.0, 0.0, 0.0])
                if parent_dir is not None:
                    d = d + 1.5 * parent_dir
                d /= np.linalg.norm(d)
                length = rng.uniform(0.25, 0.45) * an.ac * (0.7 ** depth)
                end = start + d * length
                vessels |= _tube(f, [start, end], radius)
                if depth < 2:
                    stack.append((end, d, max(radius * 0.65, 0.7), depth + 1))
    c.paint(vessels & lungs, HU_BLOOD - 20, False, jitter=30)


def _paint_heart(c: _Canvas, an: _Anatomy, enlarged: float, effusion_mm: float) -> np.ndarray:
    """Heart with pericardium, epicardial fat, myocardium and blood pool; `enlarged` scales it (cardiomegaly),
    `effusion_mm` adds pericardial fluid. Returns the heart's voxels."""
    f = c.f
    semi = np.array(an.heart_semi) * enlarged
    cen = an.heart_center
    pericardium = 1.2
    outer = semi + effusion_mm + pericardium

    def shell(inset: float) -> np.ndarray:
        return _ellipsoid(f, cen, np.maximum(outer - inset, 0.5))

    heart = shell(0.0)
    c.paint(heart, HU_SOFT_TISSUE - 10, "heart", jitter=5)  # pericardium
    if effusion_mm > 0:
        c.paint(shell(pericardium), HU_FLUID, "heart", jitter=5)
    fat = 1.0
    c.paint(shell(pericardium + effusion_mm), HU_FAT + 20, "heart", jitter=8)  # epicardial fat
    c.paint(shell(pericardium + effusion_mm + fat), HU_MYOCARDIUM, "heart", jitter=5)
    c.paint(shell(pericardium + effusion_mm + fat + max(6.0 * an.k, 2.5)), HU_BLOOD, "heart", jitter=5)
    return heart


def _aorta_centerline(f: _Frame, an: _Anatomy) -> list[tuple[float, float, float]]:
    """Ascending aorta from the heart, the arch around the left of the trachea, the descending aorta down
    past the diaphragm."""
    asc, desc = an.aorta_asc_uv, an.aorta_desc_uv
    w_arch = f.w_at(an.arch_t)
    mid = (0.5 * (asc[0] + desc[0]) + 0.12 * an.ac, an.trachea_uv[1] - an.trachea_r - an.aorta_r)
    return [(asc[0], asc[1], an.heart_center[2]), (asc[0], asc[1], w_arch), (mid[0], mid[1], w_arch + 2.0),
            (desc[0], desc[1], w_arch), (desc[0], desc[1], f.w1[0] - 10.0)]


def _paint_great_vessels(c: _Canvas, an: _Anatomy, below: np.ndarray) -> list:
    """Aorta and superior vena cava (mediastinum above the diaphragm, abdomen below). Returns the aortic
    centreline."""
    f = c.f
    line = _aorta_centerline(f, an)
    aorta = _tube(f, line, an.aorta_r)
    c.paint(aorta & ~below, HU_BLOOD, "mediastinum", jitter=5)
    c.paint(aorta & below, HU_BLOOD, "abdomen", jitter=5)
    svc_u = an.aorta_asc_uv[0] - an.aorta_r - max(6.0 * an.k, 2.5) - 1.0
    svc = _tube(f, [(svc_u, an.aorta_asc_uv[1] + 2.0, f.w1[-1] + 5.0),
                    (svc_u, an.aorta_asc_uv[1] + 2.0, an.heart_center[2] + 0.5 * an.heart_semi[2])],
                max(6.0 * an.k, 2.5))
    c.paint(svc, HU_BLOOD, "mediastinum", jitter=5)
    return line


def _lymph_node_stations(f: _Frame, an: _Anatomy) -> dict[str, tuple[float, float, float]]:
    tu, tv = an.trachea_uv
    r = an.trachea_r
    return {
        "right paratracheal region": (tu - r - 0.1 * an.ac, tv, f.w_at(an.carina_t + 0.1)),
        "subcarinal region": (tu, tv + 0.6 * r, f.w_at(an.carina_t - 0.06)),
        "prevascular region": (an.aorta_asc_uv[0] + 0.05 * an.ac, an.aorta_asc_uv[1] - an.aorta_r - 0.05 * an.bc,
                               f.w_at(an.arch_t - 0.05)),
        "aortopulmonary window": (0.14 * an.ac, tv - 0.2 * an.bc, f.w_at(an.arch_t - 0.06)),
    }


def _paint_lymph_nodes(c: _Canvas, an: _Anatomy, enlarged: bool) -> dict | None:
    """Small normal mediastinal nodes; with lymphadenopathy, one or two enlarged (short axis 16 to 26 mm)."""
    f, rng = c.f, c.rng
    stations = _lymph_node_stations(f, an)
    names = list(stations)
    for name in names:  # small normal nodes, 3-6 mm
        if rng.random() < 0.6:
            r = rng.uniform(1.5, 3.0)
            c.paint(_ellipsoid(f, stations[name], (r, r, r * 1.3)), HU_LYMPH_NODE, "mediastinum", jitter=5)
    if not enlarged:
        return None
    chosen = list(rng.choice(names, size=int(rng.integers(1, 3)), replace=False))
    sizes = []
    for name in chosen:
        short = float(rng.integers(16, 27))
        node = _ellipsoid(f, stations[name], (short / 2, short / 2 * 1.1, short / 2 * 1.4))
        c.paint(node, HU_LYMPH_NODE, "mediastinum", jitter=5)
        sizes.append(short)
    return {"stations": [str(s) for s in chosen], "short_axis_mm": int(max(sizes))}


def _paint_esophagus(c: _Canvas, an: _Anatomy, hernia: bool) -> dict | None:
    """Collapsed esophagus (a little air in its lumen) from the top down to the hiatus, where it bends left
    into the stomach; with a hiatal hernia, part of the stomach with an air-fluid level sits above the
    diaphragm behind the heart."""
    f, rng = c.f, c.rng
    eu, ev = an.esophagus_uv
    w_hiatus = f.w_at(an.dome_t["left"] - 0.02)
    line = [(eu, ev, f.w1[-1] + 5.0), (eu, ev, w_hiatus),
            (eu + 0.25 * an.ac, ev - 0.3 * an.bc, w_hiatus - 0.06 * f.span)]
    tube = _tube(f, line, an.esophagus_r)
    c.paint(tube, HU_SOFT_TISSUE - 5, "esophagus", jitter=5)
    lumen = _tube(f, line[:2], max(an.esophagus_r * 0.3, 0.8)) & (rng.random(f.shape[0])[:, None, None] < 0.3)
    c.paint(lumen, HU_AIR + 200, "esophagus", jitter=30)
    if not hernia:
        return None
    size = float(rng.uniform(0.35, 0.5) * an.bc)
    cen = (eu + 0.05 * an.ac, ev + 0.1 * size, w_hiatus + 0.5 * size)
    sac = _ellipsoid(f, cen, (size, 0.8 * size, size))
    inner = _ellipsoid(f, cen, (size - 2.5, 0.8 * size - 2.5, size - 2.5))
    c.paint(sac, HU_SOFT_TISSUE, "esophagus", jitter=5)
    c.paint(inner, HU_FLUID, "esophagus", jitter=5)
    c.paint(inner & (f.v < cen[1] - 0.1 * size), HU_AIR, "esophagus", jitter=5)
    return {"size_mm": int(round(2 * size))}


def _paint_airways(c: _Canvas, an: _Anatomy) -> None:
    """Trachea from the top of the scan to the carina, then both main bronchi: air with a thin wall."""
    f = c.f
    tu, tv = an.trachea_uv
    w_car = f.w_at(an.carina_t)
    r_b = 0.7 * an.trachea_r
    wall = max(1.5 * an.k * 2, 1.2)
    right = (tu - 0.3 * an.ac, tv + 0.1 * an.bc, w_car - 0.07 * f.span)  # right main bronchus: steeper
    left = (tu + 0.33 * an.ac, tv + 0.12 * an.bc, w_car - 0.1 * f.span)
    trachea = [(tu, tv, f.w1[-1] + 5.0), (tu, tv, w_car)]
    outer = _tube(f, trachea, an.trachea_r) | _tube(f, [trachea[1], right], r_b) \
        | _tube(f, [trachea[1], left], r_b)
    lumen = _tube(f, trachea, an.trachea_r - wall) | _tube(f, [trachea[1], right], r_b - wall) \
        | _tube(f, [trachea[1], left], r_b - wall)
    c.paint(outer, HU_SOFT_TISSUE, "trachea and bronchie", jitter=5)
    c.paint(lumen, HU_AIR, "trachea and bronchie", jitter=5)


def _paint_thyroid(c: _Canvas, an: _Anatomy) -> None:
    """Two thyroid lobes either side of the trachea and the isthmus in front of it, in the top slices."""
    f = c.f
    tu, tv = an.trachea_uv
    lobe_semi = (max(6.0 * an.k, 3.0), max(10.0 * an.k, 4.0), 0.09 * f.span)
    w = f.w_at(0.93)
    gland = f.zeros()
    for s in (-1.0, 1.0):
        gland |= _ellipsoid(f, (tu + s * (an.trachea_r + lobe_semi[0] + 1.0), tv - 0.3 * an.trachea_r, w),
                            lobe_semi)
    gland |= _ellipsoid(f, (tu, tv - an.trachea_r - lobe_semi[0] * 0.5, w - 0.03 * f.span),
                        (an.trachea_r, lobe_semi[0] * 0.5, 0.03 * f.span))
    c.paint(gland, HU_THYROID, "thyroid", jitter=5)


def _paint_breasts(c: _Canvas, an: _Anatomy) -> None:
    """Breast fat with fibroglandular tissue, in front of the pectoral muscles."""
    f, rng = c.f, c.rng
    breasts = _breast_volume(f, an)
    muscle_layer = _elliptic_cylinder(f, (0.0, 0.0), (an.a - an.fat, an.b - an.fat))
    breasts &= ~muscle_layer
    c.paint(breasts, HU_FAT, "breast", jitter=8)
    glandular = breasts & (rng.random(f.shape) < (0.5 if an.sex == "F" else 0.15))
    glandular = ndimage.binary_opening(glandular) & breasts
    c.paint(glandular, HU_GLANDULAR, "breast", jitter=8)


def _paint_spine(c: _Canvas, an: _Anatomy) -> None:
    """Vertebral bodies (cortex and cancellous bone) with discs, spinal canal, laminae and spinous processes."""
    f = c.f
    top, bottom = f.w1[-1] + 5.0, f.w1[0] - 5.0
    axis = [(0.0, an.spine_v, top), (0.0, an.spine_v, bottom)]
    body = _tube(f, axis, an.spine_r)
    canal_r = 0.35 * an.spine_r
    canal_v = an.spine_v + an.spine_r + canal_r + 1.0
    arch = _tube(f, [(0.0, canal_v, top), (0.0, canal_v, bottom)], canal_r + 2.5)
    canal = _tube(f, [(0.0, canal_v, top), (0.0, canal_v, bottom)], canal_r)
    spinous_end = an.b - an.fat - 2.0
    spinous = _all_slices(f, (np.abs(f.u) < 2.0) & (f.v > canal_v) & (f.v < spinous_end))
    transverse = _all_slices(f, (np.abs(f.u) < an.spine_r * 1.6) & (np.abs(f.v - canal_v + 0.5) < 2.0))
    period = 28.0 * an.k * 1.0 + 4.0
    disc_level = ((f.w - f.w1[0]) % period) < max(5.0 * an.k, 2.0)
    c.paint(body | arch | spinous | transverse, HU_CORTICAL_BONE, "bone", jitter=40)
    c.paint(_tube(f, axis, an.spine_r - 1.5), HU_CANCELLOUS_BONE, "bone", jitter=30)
    c.paint(body & disc_level, HU_DISC, None, jitter=8)
    c.paint(canal, HU_CSF, None, jitter=5)


def _paint_ribs(c: _Canvas, an: _Anatomy) -> None:
    """Ribs in the band outside the cavity: each runs obliquely down toward the front, so an axial slice cuts
    several of them into arcs; cortical rims with marrow inside. The anterior midline is left to the sternum
    and the posterior midline to the spine."""
    f = c.f
    outer = _elliptic_cylinder(f, (0.0, an.cav_v), (an.ac + an.rib, an.bc + an.rib), (0.08, 0.97))
    inner = _elliptic_cylinder(f, (0.0, an.cav_v), (an.ac, an.bc))
    band = outer & ~inner
    theta = np.abs(np.arctan2(f.u / an.ac, (f.v - an.cav_v) / an.bc))  # 0 posterior, pi anterior
    arc_mm = theta * 0.5 * (an.ac + an.bc)
    period = 26.0 * an.k + 4.0
    height = max(10.0 * an.k, 3.5)
    phase = ((f.w + 0.3 * arc_mm) / period + an.rib_phase) % 1.0
    ribs = band & (phase < height / period)
    ribs &= ~((np.abs(f.u) < 0.22 * an.ac) & (f.v < an.cav_v))
    ribs &= ~(np.abs(f.u) < 0.15 * an.ac)
    c.paint(ribs, HU_CORTICAL_BONE, "bone", jitter=40)
    core = ribs & (np.abs(phase - 0.5 * height / period) < 0.25 * height / period)
    c.paint(core, HU_RIB, "bone", jitter=30)


def _sternum(f: _Frame, an: _Anatomy) -> np.ndarray:
    front = an.cav_v - an.bc
    return (np.abs(f.u) < 0.12 * an.ac) & (f.v >= front - an.rib) & (f.v <= front) & (f.t > 0.28) & (f.t < 0.9)


def _paint_sternum(c: _Canvas, an: _Anatomy, wires: bool) -> dict | None:
    """Sternum (cortex around cancellous bone); after a sternotomy, steel wires loop around it."""
    f, rng = c.f, c.rng
    sternum = _sternum(f, an)
    c.paint(sternum, HU_CORTICAL_BONE, "bone", jitter=40)
    core = ndimage.binary_erosion(sternum, structure=np.ones((1, 3, 3), bool), iterations=1)
    c.paint(core, HU_CANCELLOUS_BONE + 60, "bone", jitter=30)
    if not wires:
        return None
    rim = ndimage.binary_dilation(sternum, structure=np.ones((1, 3, 3), bool), iterations=2) & ~sternum
    slices = np.flatnonzero(sternum.any(axis=(1, 2)))
    n = min(len(slices), int(rng.integers(4, 7)))
    levels = slices[np.linspace(0, len(slices) - 1, n).astype(int)] if n else []
    for z in levels:
        loop = np.zeros_like(sternum)
        loop[z] = rim[z]
        c.paint(loop, HU_METAL, "bone", jitter=100)
    return {"device": "sternotomy wires", "region": "bone", "count": int(len(levels))}


def _paint_pleura(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """The pleura: the outer 2 voxels (in-plane) of the lung space.
    Returns (lungs, pleura) masks."""
    space = c.region("lung")
    inner = ndimage.binary_erosion(space, structure=_CROSS_2D, iterations=2, border_value=1)
    pleura = space & ~inner
    c.paint(pleura, HU_PLEURA, "pleura", jitter=40)
    return inner, pleura


_CROSS_2D = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbourhood


def _paint_pleural_effusion(c: _Canvas, an: _Anatomy, lung_space: dict, side: str) -> dict:
    """Fluid layering in the dependent (posterior) pleural space of one side, deepest at the base."""
    f, rng = c.f, c.rng
    depth = float(rng.integers(18, 36))
    top_t = an.dome_t[side] + rng.uniform(0.25, 0.35)
    back = an.cav_v + an.bc * np.sqrt(np.clip(1 - (f.u / an.ac) ** 2, 0, 1))
    taper = np.clip((top_t - f.t) / (top_t - an.dome_t[side] + 1e-6), 0, 1)
    fluid = lung_space[side] & (f.v > back - depth * taper) & (taper > 0)
    fluid &= (c.region("lung") | c.region("pleura"))
    c.paint(fluid, HU_FLUID, "pleura", jitter=6)
    return {"depth_mm": int(depth), "voxels": int(fluid.sum())}


def _lobes(f: _Frame, an: _Anatomy, lungs: np.ndarray) -> dict[str, np.ndarray]:
    """Lobes by fissure planes: the oblique fissures run from posterior-superior to anterior-inferior; the
    right horizontal fissure splits upper from middle lobe."""
    oblique = f.w_at(an.fissure_t) + 0.9 * (f.v - an.cav_v)
    lower = f.w < oblique
    upper_right = f.w > f.w_at(an.horizontal_fissure_t)
    right, left = lungs & (f.u < 0), lungs & (f.u > 0)
    return {
        "right upper lobe": right & ~lower & upper_right,
        "right middle lobe": right & ~lower & ~upper_right,
        "right lower lobe": right & lower,
        "left upper lobe": left & ~lower,
        "left lower lobe": left & lower,
    }


def _fits(mask: np.ndarray, idx: Sequence[int], radius_vox: Sequence[int]) -> bool:
    """Whether a box of the given half-size around idx lies inside the mask."""
    sl = tuple(slice(i - r, i + r + 1) for i, r in zip(idx, radius_vox))
    if any(s.start < 0 or s.stop > n for s, n in zip(sl, mask.shape)):
        return False
    return bool(mask[sl].all())


def _place_in(rng: np.random.Generator, f: _Frame, mask: np.ndarray, radius_mm: float,
              tries: int = 60) -> tuple[int, int, int] | None:
    """A random voxel of `mask` around which a sphere of radius_mm fits inside it (None if none found)."""
    cand = np.flatnonzero(mask)
    if cand.size == 0:
        return None
    r_vox = [max(int(np.ceil(radius_mm / s)) - (1 if i == 0 else 0), 0) for i, s in enumerate(f.spacing_zyx)]
    for _ in range(tries):
        idx = np.unravel_index(int(cand[rng.integers(cand.size)]), mask.shape)
        if _fits(mask, idx, r_vox):
            return tuple(int(i) for i in idx)
    # fall back to the deepest voxel of the mask
    dist = ndimage.distance_transform_edt(mask, sampling=f.spacing_zyx)
    return tuple(int(i) for i in np.unravel_index(int(dist.argmax()), mask.shape))


def _paint_nodule(c: _Canvas, an: _Anatomy, lobes: dict, lungs: np.ndarray) -> dict:
    """A solid, slightly ellipsoidal nodule inside one lobe."""
    f, rng = c.f, c.rng
    names = [n for n in lobes if lobes[n].sum() > 50] or list(lobes)
    lobe = str(rng.choice(names))
    size = float(rng.integers(14, 31))
    idx = _place_in(rng, f, lobes[lobe] & lungs, size / 2 + 1.0)
    if idx is None:
        idx = tuple(s // 2 for s in f.shape)
    center = f.point_of(idx)
    semi = [size / 2 * rng.uniform(0.9, 1.1) for _ in range(3)]
    c.paint(_ellipsoid(f, center, semi) & lungs, HU_NODULE, False, jitter=10)
    side, part = lobe.split(" ", 1)
    return {"side": side, "lobe": part, "size_mm": int(size), "center_index_zyx": list(idx)}


def _paint_consolidation(c: _Canvas, an: _Anatomy, lobes: dict, lungs: np.ndarray, avoid: str | None) -> dict:
    """Airless lung (soft-tissue density with a few air bronchograms) filling part of one lobe."""
    f, rng = c.f, c.rng
    names = [n for n in lobes if lobes[n].sum() > 200 and n != avoid] or list(lobes)
    lobe = str(rng.choice(names))
    region = lobes[lobe] & lungs
    idx = _place_in(rng, f, region, 4.0)
    if idx is None:
        idx = tuple(s // 2 for s in f.shape)
    center = f.point_of(idx)
    semi = (rng.uniform(0.3, 0.4) * an.ac, rng.uniform(0.4, 0.55) * an.bc, rng.uniform(0.12, 0.18) * f.span)
    blob = _ellipsoid(f, center, semi) & region
    c.paint(blob, HU_SOFT_TISSUE - 5, False, jitter=10)
    bronchus = _tube(f, [center, (center[0] + semi[0] * 0.8 * np.sign(center[0]), center[1], center[2])], 1.0)
    c.paint(bronchus & blob, HU_AIR + 100, False, jitter=30)
    side, part = lobe.split(" ", 1)
    return {"side": side, "lobe": part, "voxels": int(blob.sum())}


def _paint_emphysema(c: _Canvas, an: _Anatomy, lungs: np.ndarray) -> dict:
    """Patchy low attenuation (centrilobular emphysema) in the upper lung zones, plus a few bullae."""
    f, rng = c.f, c.rng
    nz, ny, nx = f.shape
    coarse = rng.random((max(nz // 3, 2), max(ny // 8, 2), max(nx // 8, 2)))
    field = ndimage.zoom(coarse, (nz / coarse.shape[0], ny / coarse.shape[1], nx / coarse.shape[2]), order=1)
    field = field[:nz, :ny, :nx]
    if field.shape != f.shape:
        field = np.pad(field, [(0, n - s) for n, s in zip(f.shape, field.shape)], mode="edge")
    upper = f.t > 0.5
    patches = lungs & upper & (field > 0.45)
    c.paint(patches, HU_EMPHYSEMA, False, jitter=8)
    for _ in range(int(rng.integers(1, 4))):
        idx = _place_in(rng, f, lungs & upper, 3.0, tries=20)
        if idx is not None:
            r = rng.uniform(3.0, 6.0)
            c.paint(_ellipsoid(f, f.point_of(idx), (r, r, r)) & lungs, HU_BULLA, False, jitter=5)
    return {"zone": "upper", "voxels": int(patches.sum())}


def _paint_aortic_calcification(c: _Canvas, an: _Anatomy, line: list, below: np.ndarray) -> dict:
    """Bright calcified plaques in the aortic wall along the arch and descending aorta."""
    f, rng = c.f, c.rng
    pts = np.asarray(line[1:], dtype=float)
    n = int(rng.integers(12, 25))
    for _ in range(n):
        seg = int(rng.integers(len(pts) - 1))
        s = rng.uniform(0, 1)
        p = pts[seg] + s * (pts[seg + 1] - pts[seg])
        ang = rng.uniform(0, 2 * np.pi)
        off = np.array([np.cos(ang), np.sin(ang), 0.0]) * an.aorta_r * 0.95
        speck = _ellipsoid(f, p + off, (2.0, 2.0, 3.0))
        c.paint(speck, float(rng.uniform(*HU_CALCIFICATION)), False, jitter=30)
    return {"plaques": n}


def _paint_catheter(c: _Canvas, an: _Anatomy) -> dict:
    """A central venous catheter entering from the right at the top and running down the superior vena cava
    to the cavoatrial junction."""
    f = c.f
    svc_u = an.aorta_asc_uv[0] - an.aorta_r - max(6.0 * an.k, 2.5) - 1.0
    svc_v = an.aorta_asc_uv[1] + 2.0
    tip_w = an.heart_center[2] + 0.5 * an.heart_semi[2]
    line = [(-0.45 * an.ac, an.cav_v - 0.5 * an.bc, f.w1[-1] + 5.0), (svc_u, svc_v, f.w_at(0.85)),
            (svc_u, svc_v, tip_w)]
    tube = _tube(f, line, 2.5)
    c.paint(tube, HU_CATHETER, "mediastinum", jitter=60)
    return {"device": "central venous catheter", "region": "mediastinum"}


def draw_findings(rng: np.random.Generator) -> list[str]:
    """A random set of finding kinds for one case: each kind with probability PROB_FINDING (a case with none
    is a normal case)."""
    return [k for k, drawn in zip(FINDING_KINDS, rng.random(len(FINDING_KINDS)) < PROB_FINDING) if drawn]


def make_phantom(rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE,
                 spacing: Sequence[float] = DEFAULT_SPACING, *, findings: Iterable[str] | None = None,
                 origin: Sequence[float] | None = None):
    """Build one synthetic chest CT.

    rng       the case's numpy Generator (everything random is drawn from it)
    shape     voxels [x, y, z]; spacing: mm [x, y, z]
    findings  finding kinds to place (keys of FINDINGS); None draws a random set (maybe none)
    origin    world position of voxel 0 (LPS, mm); None draws a scanner-like one

    Returns (hu, masks, findings, geometry):
      hu        int16 array [z, y, x] in HU (air -1000, lung about -850, fat -100, soft tissue 40, bone 250-1000)
      masks     {region: bool array [z, y, x]} for all 10 REGIONS (the phantom's anatomy)
      findings  list of dicts: kind, label, region, plus details the report uses (side, lobe, size_mm, ...)
      geometry  PhantomGeometry (identity direction, LPS)
    """
    nx, ny, nz = (int(s) for s in shape)
    if min(nx, ny, nz) < 8:
        raise ValueError(f"make_phantom: shape {tuple(shape)} is too small (need at least 8 voxels per axis)")
    sx, sy, sz = (float(s) for s in spacing)
    kinds = draw_findings(rng) if findings is None else list(findings)
    unknown = [k for k in kinds if k not in FINDINGS]
    if unknown:
        raise ValueError(f"make_phantom: unknown finding kind(s) {unknown}; known: {', '.join(FINDING_KINDS)}")
    if origin is None:
        origin = (round(-(nx - 1) * sx / 2 + rng.uniform(-15, 15), 3),
                  round(-(ny - 1) * sy / 2 + rng.uniform(-15, 15), 3),
                  round(rng.uniform(-350.0, -150.0), 3))
    fov = (nx * sx, ny * sy)
    center_xy = (origin[0] + (nx - 1) * sx / 2 + rng.uniform(-0.03, 0.03) * fov[0],
                 origin[1] + (ny - 1) * sy / 2 + rng.uniform(-0.03, 0.03) * fov[1])
    geometry0 = PhantomGeometry((nx, ny, nz), (sx, sy, sz), tuple(float(o) for o in origin))
    f = _Frame(geometry0, center_xy, t_shift=rng.uniform(-0.03, 0.03))
    an = _draw_anatomy(rng, f, fov)
    c = _Canvas(f, rng)
    found: list[dict] = []

    def record(kind: str, **details) -> None:
        label, region = FINDINGS[kind]
        found.append({"kind": kind, "label": label, "region": details.pop("region", region), **details})

    below = f.w < _diaphragm_w(f, an)
    _paint_table(c, an)
    _paint_body_wall(c, an)
    cavity = _paint_cavity(c, an, below)
    _paint_abdomen(c, an, cavity, below)
    space = _lung_space(f, an, cavity, below)
    _paint_lungs(c, an, space)
    enlarged = float(rng.uniform(1.3, 1.5)) if "cardiomegaly" in kinds else 1.0
    pe_mm = float(rng.integers(10, 21)) if "pericardial_effusion" in kinds else 0.0
    line = _paint_great_vessels(c, an, below)  # the heart then covers the root of the aorta
    _paint_heart(c, an, enlarged, pe_mm)
    nodes = _paint_lymph_nodes(c, an, "lymphadenopathy" in kinds)
    hernia = _paint_esophagus(c, an, "hiatal_hernia" in kinds)
    _paint_airways(c, an)
    _paint_thyroid(c, an)
    _paint_breasts(c, an)
    _paint_spine(c, an)
    _paint_ribs(c, an)
    device = None
    if "medical_material" in kinds:
        device = "sternotomy wires" if rng.random() < 0.5 else "central venous catheter"
    wires = _paint_sternum(c, an, device == "sternotomy wires")
    catheter = _paint_catheter(c, an) if device == "central venous catheter" else None

    lungs, pleura = _paint_pleura(c)
    _paint_lung_vessels(c, an, lungs)
    if "pleural_effusion" in kinds:
        side = str(rng.choice(["right", "left", "bilateral"]))
        details = {s: _paint_pleural_effusion(c, an, space, s)
                   for s in (("right", "left") if side == "bilateral" else (side,))}
        record("pleural_effusion", side=side, depth_mm=max(d["depth_mm"] for d in details.values()))
        lungs = c.region("lung")
    lobes = _lobes(f, an, lungs)
    if "emphysema" in kinds:
        record("emphysema", **_paint_emphysema(c, an, lungs))
    nodule = _paint_nodule(c, an, lobes, lungs) if "lung_nodule" in kinds else None
    if nodule:
        record("lung_nodule", **nodule)
    if "consolidation" in kinds:
        avoid = f"{nodule['side']} {nodule['lobe']}" if nodule else None
        record("consolidation", **_paint_consolidation(c, an, lobes, lungs, avoid))
    if "cardiomegaly" in kinds:
        record("cardiomegaly", scale=round(enlarged, 2))
    if pe_mm:
        record("pericardial_effusion", thickness_mm=int(pe_mm))
    if "arterial_wall_calcification" in kinds:
        record("arterial_wall_calcification", **_paint_aortic_calcification(c, an, line, below))
    if nodes:
        record("lymphadenopathy", **nodes)
    if hernia:
        record("hiatal_hernia", **hernia)
    if wires:
        record("medical_material", **wires)
    if catheter:
        record("medical_material", **catheter)
    order = {k: i for i, k in enumerate(FINDING_KINDS)}
    found.sort(key=lambda d: order[d["kind"]])

    hu = ndimage.gaussian_filter(c.hu, sigma=[BLUR_SIGMA_MM / s for s in f.spacing_zyx], mode="nearest")
    hu += rng.normal(0.0, NOISE_SD_HU, size=hu.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), HU_MIN_STORED, HU_MAX_STORED).astype(np.int16)
    masks = {r: c.label == _LABEL_OF[r] for r in REGIONS}
    anatomy = {"sex": an.sex, "body_semi_axes_mm": [round(an.a, 1), round(an.b, 1)],
               "cardiothoracic_ratio": round(float(an.heart_semi[0] * enlarged / an.ac), 2)}
    geometry = PhantomGeometry(geometry0.size, geometry0.spacing, geometry0.origin, anatomy=anatomy)
    return hu, masks, found, geometry
