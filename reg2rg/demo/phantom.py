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

    def w_at(self, height: float) -> float:
        """w (mm) of anatomical height t."""
        return (height - self.t_shift - 0.5) * self.span

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

    def point_of(self, idx: Sequence[int]) -> tuple[float, float, float]:
        """(u, v, w) of voxel (z, y, x)."""
        return float(self.u1[idx[2]]), float(self.v1[idx[1]]), float(self.w1[idx[0]])


def _ellipsoid(frame: _Frame, center: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid (centre and semi-axes in mm, u v w)."""
    out = frame.zeros()
    semi = [max(float(s), 1e-3) for s in semi]
    sl = frame.box([mid - s for mid, s in zip(center, semi)], [mid + s for mid, s in zip(center, semi)])
    if sl is None:
        return out
    u, v, w = frame.sub(sl)
    out[sl] = ((u - center[0]) / semi[0]) ** 2 + ((v - center[1]) / semi[1]) ** 2 \
        + ((w - center[2]) / semi[2]) ** 2 <= 1.0
    return out


def _tube(frame: _Frame, points: Sequence[Sequence[float]], radius: float | Sequence[float]) -> np.ndarray:
    """Voxels within `radius` mm of a polyline through `points` (u, v, w); one radius per segment allowed."""
    out = frame.zeros()
    pts = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts) - 1,))
    for p0, p1, r in zip(pts[:-1], pts[1:], radii):
        sl = frame.box(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
        if sl is None:
            continue
        u, v, w = frame.sub(sl)
        seg = p1 - p0
        seg2 = float(seg @ seg) or 1e-9
        du, dv, dw = u - p0[0], v - p0[1], w - p0[2]
        s = np.clip((du * seg[0] + dv * seg[1] + dw * seg[2]) / seg2, 0.0, 1.0)
        d2 = (du - s * seg[0]) ** 2 + (dv - s * seg[1]) ** 2 + (dw - s * seg[2]) ** 2
        out[sl] |= d2 <= r * r
    return out


def _all_slices(frame: _Frame, mask_yx: np.ndarray) -> np.ndarray:
    """A mask over (y, x) repeated on every slice."""
    return np.broadcast_to(mask_yx, frame.shape).copy()


def _elliptic_cylinder(frame: _Frame, center_uv: Sequence[float], semi_uv: Sequence[float],
                       t_range: tuple[float, float] = (-np.inf, np.inf)) -> np.ndarray:
    """Voxels inside an elliptic cylinder along z, between anatomical heights t_range."""
    inside = ((frame.u - center_uv[0]) / semi_uv[0]) ** 2 + ((frame.v - center_uv[1]) / semi_uv[1]) ** 2 <= 1.0
    return inside & (frame.t >= t_range[0]) & (frame.t <= t_range[1])


# --------------------------------------------------------------------------------------------------------------
# The phantom's anatomy
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Anatomy:
    """Per-case anatomical parameters in mm (u, v relative to the body centre) and heights t."""

    sex: str
    body_semi_u: float  # body semi-axes
    body_semi_v: float
    fat: float  # subcutaneous fat thickness
    muscle: float
    rib: float  # thickness of the rib band
    cav_v: float  # v of the thoracic cavity's centre (the posterior wall is thicker)
    cavity_semi_u: float  # the thoracic cavity's semi-axes
    cavity_semi_v: float
    scale: float  # size relative to an adult chest (structure diameters scale with it)
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


def _draw_anatomy(rng: np.random.Generator, frame: _Frame, fov: tuple[float, float]) -> _Anatomy:
    semi_u = 0.45 * fov[0] * rng.uniform(0.9, 1.0)
    semi_v = 0.37 * fov[1] * rng.uniform(0.9, 1.0)
    scale = semi_u / 160.0
    fat = semi_v * rng.uniform(0.06, 0.14)
    muscle = semi_v * rng.uniform(0.08, 0.11)
    rib = semi_v * 0.09
    wall = fat + muscle + rib
    cav_v = -0.12 * semi_v
    cavity_u, cavity_v = semi_u - wall, semi_v - wall - 0.12 * semi_v
    spine_r = 0.25 * cavity_v
    spine_v = cav_v + cavity_v - 0.2 * cavity_v
    esophagus_r = max(7.0 * scale, 2.5)
    esophagus_uv = (0.06 * cavity_u, spine_v - spine_r - esophagus_r - 1.0)
    trachea_r = max(9.0 * scale, 3.0)
    trachea_uv = (0.0, esophagus_uv[1] - esophagus_r - trachea_r - 1.5)
    aorta_r = max(12.0 * scale, 3.0)
    dome_r = rng.uniform(0.26, 0.32)
    carina_t = rng.uniform(0.58, 0.64)
    heart_semi = (0.42 * cavity_u, 0.48 * cavity_v, 0.15 * frame.span)
    heart_center = (0.16 * cavity_u + rng.uniform(-0.03, 0.03) * cavity_u,
                    cav_v - 0.3 * cavity_v + rng.uniform(-0.03, 0.03) * cavity_v,
                    frame.w_at(rng.uniform(0.34, 0.39)))
    sex = "F" if rng.random() < 0.5 else "M"
    return _Anatomy(
        sex=sex, body_semi_u=semi_u, body_semi_v=semi_v, fat=fat, muscle=muscle, rib=rib, cav_v=cav_v,
        cavity_semi_u=cavity_u, cavity_semi_v=cavity_v, scale=scale, mediastinum_half=0.16 * cavity_u,
        dome_t={"right": dome_r, "left": dome_r - rng.uniform(0.02, 0.05)},
        carina_t=carina_t, arch_t=carina_t + rng.uniform(0.07, 0.10),
        fissure_t=rng.uniform(0.46, 0.52), horizontal_fissure_t=carina_t - rng.uniform(0.10, 0.14),
        spine_v=spine_v, spine_r=spine_r, esophagus_uv=esophagus_uv, esophagus_r=esophagus_r,
        trachea_uv=trachea_uv, trachea_r=trachea_r, aorta_r=aorta_r,
        aorta_desc_uv=(0.22 * cavity_u, spine_v - 0.35 * spine_r),
        aorta_asc_uv=(-0.05 * cavity_u, cav_v - 0.3 * cavity_v - 0.1 * cavity_v),
        heart_center=heart_center, heart_semi=heart_semi,
        rib_phase=rng.uniform(0, 1), breast_semi_v=(0.2 if sex == "F" else 0.1) * semi_v,
    )


class _Canvas:
    """The HU volume and the region label map being painted; later paint wins."""

    def __init__(self, frame: _Frame, rng: np.random.Generator):
        self.frame = frame
        self.rng = rng
        self.hu = np.full(frame.shape, float(HU_AIR), dtype=np.float32)
        self.label = np.zeros(frame.shape, dtype=np.int8)

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


def _diaphragm_w(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    """w of the diaphragm surface over (v, u): two domes, deepest in the posterior costophrenic recesses."""
    domes = []
    for side, s in (("right", -1.0), ("left", 1.0)):
        du = (frame.u[0] - s * 0.45 * anatomy.cavity_semi_u) / anatomy.cavity_semi_u
        dv = (frame.v[0] - anatomy.cav_v - 0.05 * anatomy.cavity_semi_v) / anatomy.cavity_semi_v
        domes.append(frame.w_at(anatomy.dome_t[side]) - 0.22 * frame.span * (du ** 2 + dv ** 2))
    return np.maximum(domes[0], domes[1])[None]


def _body(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    body = _elliptic_cylinder(frame, (0.0, 0.0), (anatomy.body_semi_u, anatomy.body_semi_v))
    return body | _breast_volume(frame, anatomy)


def _breast_volume(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    """Both breasts: ellipsoids on the anterior chest wall (larger when the phantom is female)."""
    out = frame.zeros()
    semi_u = (0.26 if anatomy.sex == "F" else 0.18) * anatomy.body_semi_u
    for s in (-1.0, 1.0):
        cu = s * 0.48 * anatomy.body_semi_u
        cv = -anatomy.body_semi_v * np.sqrt(1 - 0.48 ** 2)
        out |= _ellipsoid(frame, (cu, cv, frame.w_at(0.45)), (semi_u, anatomy.breast_semi_v, 0.13 * frame.span))
    return out & (frame.v < 0)


def _paint_table(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """The scanner table: a curved plate under the patient (no region)."""
    frame = canvas.frame
    curve = anatomy.body_semi_v + 3.0 + 0.1 * (frame.u / anatomy.body_semi_u) ** 2 * anatomy.body_semi_v
    plate = _all_slices(
        frame, (frame.v >= curve) & (frame.v <= curve + 3.0) & (np.abs(frame.u) < 1.05 * anatomy.body_semi_u)
    )
    canvas.paint(plate, HU_TABLE, None, jitter=20)


def _paint_body_wall(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Skin and subcutaneous fat, then the chest wall muscles (no region: the body wall)."""
    frame = canvas.frame
    canvas.paint(_body(frame, anatomy), HU_FAT, None, jitter=8)
    muscle = _elliptic_cylinder(
        frame, (0.0, 0.0), (anatomy.body_semi_u - anatomy.fat, anatomy.body_semi_v - anatomy.fat)
    )
    canvas.paint(muscle, HU_MUSCLE, None, jitter=6)


def _paint_cavity(canvas: _Canvas, anatomy: _Anatomy, below: np.ndarray) -> np.ndarray:
    """The thoracic cavity filled with mediastinal fat (central part labelled mediastinum); returns it."""
    frame = canvas.frame
    cavity = _elliptic_cylinder(frame, (0.0, anatomy.cav_v), (anatomy.cavity_semi_u, anatomy.cavity_semi_v))
    central = cavity & ~below & (np.abs(frame.u) < 0.35 * anatomy.cavity_semi_u)
    canvas.paint(cavity & ~below, HU_SOFT_TISSUE, None, jitter=6)
    canvas.paint(central, HU_MEDIASTINAL_FAT, "mediastinum", jitter=8)
    return cavity


def _paint_abdomen(canvas: _Canvas, anatomy: _Anatomy, cavity: np.ndarray, below: np.ndarray) -> None:
    """Upper abdomen under the diaphragm: fat, liver (right), stomach with an air-fluid level and spleen (left)."""
    frame = canvas.frame
    abdomen = cavity & below
    canvas.paint(abdomen, HU_FAT, "abdomen", jitter=8)
    liver = abdomen & (frame.u < 0.15 * anatomy.cavity_semi_u + 0.1 * (frame.v - anatomy.cav_v))
    canvas.paint(liver, HU_LIVER, "abdomen", jitter=5)
    dome_l = frame.w_at(anatomy.dome_t["left"])
    st_c = (0.42 * anatomy.cavity_semi_u, anatomy.cav_v - 0.25 * anatomy.cavity_semi_v, dome_l - 0.11 * frame.span)
    st_semi = (0.3 * anatomy.cavity_semi_u, 0.42 * anatomy.cavity_semi_v, 0.12 * frame.span)
    stomach = _ellipsoid(frame, st_c, st_semi) & abdomen
    lumen = _ellipsoid(frame, st_c, [s - 2.5 for s in st_semi]) & abdomen
    canvas.paint(stomach, HU_SOFT_TISSUE, "abdomen", jitter=5)
    canvas.paint(lumen, HU_FLUID, "abdomen", jitter=5)
    canvas.paint(lumen & (frame.v < st_c[1] - 0.15 * anatomy.cavity_semi_v), HU_AIR, "abdomen", jitter=5)
    spleen = (
        _ellipsoid(
            frame,
            (0.68 * anatomy.cavity_semi_u, anatomy.cav_v + 0.5 * anatomy.cavity_semi_v, dome_l - 0.08 * frame.span),
            (0.2 * anatomy.cavity_semi_u, 0.3 * anatomy.cavity_semi_v, 0.1 * frame.span),
        )
        & abdomen
    )
    canvas.paint(spleen, HU_SPLEEN, "abdomen", jitter=5)


def _lung_space(frame: _Frame, anatomy: _Anatomy, cavity: np.ndarray, below: np.ndarray) -> dict[str, np.ndarray]:
    """The space each lung (with its pleura) takes before mediastinal structures are carved out."""
    out = {}
    apex_t = 0.97
    rz = (apex_t - 0.45) * frame.span
    for side, s in (("right", -1.0), ("left", 1.0)):
        core = _ellipsoid(
            frame,
            (s * 0.5 * anatomy.cavity_semi_u, anatomy.cav_v, frame.w_at(0.45)),
            (0.62 * anatomy.cavity_semi_u, 1.05 * anatomy.cavity_semi_v, rz),
        )
        medial = anatomy.mediastinum_half * (
            1.0 + 0.6 * ((frame.v - anatomy.cav_v) / anatomy.cavity_semi_v) ** 2
        )  # concave medial border
        out[side] = core & cavity & ~below & (s * frame.u > medial)
    return out


def _paint_lungs(canvas: _Canvas, anatomy: _Anatomy, space: dict[str, np.ndarray]) -> None:
    """Aerated lung, slightly denser posteriorly (dependent), with a little texture."""
    frame = canvas.frame
    gradient = (
        HU_LUNG + HU_LUNG_DEPENDENT_GRADIENT * np.clip((frame.v - anatomy.cav_v) / anatomy.cavity_semi_v, -1, 1) / 2
    )
    hu = np.broadcast_to(gradient, frame.shape).astype(np.float32)
    for side in ("right", "left"):
        canvas.paint(space[side], hu, "lung", jitter=15)


def _paint_lung_vessels(canvas: _Canvas, anatomy: _Anatomy, lungs: np.ndarray) -> None:
    """Branching pulmonary vessels from each hilum, thinning toward the periphery (inside the lungs only)."""
    frame = canvas.frame
    rng = canvas.rng
    vessels = frame.zeros()
    for s in (-1.0, 1.0):
        hilum = np.array(
            [
                s * (anatomy.mediastinum_half + 0.12 * anatomy.cavity_semi_u),
                anatomy.cav_v + 0.05 * anatomy.cavity_semi_v,
                frame.w_at(anatomy.carina_t - 0.06),
            ]
        )
        stack = [(hilum, None, max(3.0 * anatomy.scale, 1.6), 0)]
        while stack:
            start, parent_dir, radius, depth = stack.pop()
            n_children = 5 if depth == 0 else 2
            for _ in range(n_children):
                d = rng.normal(size=3) * np.array([0.6, 0.8, 1.2]) + np.array([s * 1.0, 0.0, 0.0])
                if parent_dir is not None:
                    d = d + 1.5 * parent_dir
                d /= np.linalg.norm(d)
                length = rng.uniform(0.25, 0.45) * anatomy.cavity_semi_u * (0.7 ** depth)
                end = start + d * length
                vessels |= _tube(frame, [start, end], radius)
                if depth < 2:
                    stack.append((end, d, max(radius * 0.65, 0.7), depth + 1))
    canvas.paint(vessels & lungs, HU_BLOOD - 20, False, jitter=30)


def _paint_heart(canvas: _Canvas, anatomy: _Anatomy, enlarged: float, effusion_mm: float) -> np.ndarray:
    """Heart with pericardium, epicardial fat, myocardium and blood pool; `enlarged` scales it (cardiomegaly),
    `effusion_mm` adds pericardial fluid. Returns the heart's voxels."""
    frame = canvas.frame
    semi = np.array(anatomy.heart_semi) * enlarged
    cen = anatomy.heart_center
    pericardium = 1.2
    outer = semi + effusion_mm + pericardium

    def shell(inset: float) -> np.ndarray:
        return _ellipsoid(frame, cen, np.maximum(outer - inset, 0.5))

    heart = shell(0.0)
    canvas.paint(heart, HU_SOFT_TISSUE - 10, "heart", jitter=5)  # pericardium
    if effusion_mm > 0:
        canvas.paint(shell(pericardium), HU_FLUID, "heart", jitter=5)
    fat = 1.0
    canvas.paint(shell(pericardium + effusion_mm), HU_FAT + 20, "heart", jitter=8)  # epicardial fat
    canvas.paint(shell(pericardium + effusion_mm + fat), HU_MYOCARDIUM, "heart", jitter=5)
    canvas.paint(shell(pericardium + effusion_mm + fat + max(6.0 * anatomy.scale, 2.5)), HU_BLOOD, "heart", jitter=5)
    return heart


def _aorta_centerline(frame: _Frame, anatomy: _Anatomy) -> list[tuple[float, float, float]]:
    """Ascending aorta from the heart, the arch around the left of the trachea, the descending aorta down
    past the diaphragm."""
    asc, desc = anatomy.aorta_asc_uv, anatomy.aorta_desc_uv
    w_arch = frame.w_at(anatomy.arch_t)
    mid = (
        0.5 * (asc[0] + desc[0]) + 0.12 * anatomy.cavity_semi_u,
        anatomy.trachea_uv[1] - anatomy.trachea_r - anatomy.aorta_r,
    )
    return [(asc[0], asc[1], anatomy.heart_center[2]), (asc[0], asc[1], w_arch), (mid[0], mid[1], w_arch + 2.0),
            (desc[0], desc[1], w_arch), (desc[0], desc[1], frame.w1[0] - 10.0)]


def _paint_great_vessels(canvas: _Canvas, anatomy: _Anatomy, below: np.ndarray) -> list:
    """Aorta and superior vena cava (mediastinum above the diaphragm, abdomen below). Returns the aortic
    centreline."""
    frame = canvas.frame
    line = _aorta_centerline(frame, anatomy)
    aorta = _tube(frame, line, anatomy.aorta_r)
    canvas.paint(aorta & ~below, HU_BLOOD, "mediastinum", jitter=5)
    canvas.paint(aorta & below, HU_BLOOD, "abdomen", jitter=5)
    svc_u = anatomy.aorta_asc_uv[0] - anatomy.aorta_r - max(6.0 * anatomy.scale, 2.5) - 1.0
    svc = _tube(frame, [(svc_u, anatomy.aorta_asc_uv[1] + 2.0, frame.w1[-1] + 5.0),
                    (svc_u, anatomy.aorta_asc_uv[1] + 2.0, anatomy.heart_center[2] + 0.5 * anatomy.heart_semi[2])],
                max(6.0 * anatomy.scale, 2.5))
    canvas.paint(svc, HU_BLOOD, "mediastinum", jitter=5)
    return line


def _lymph_node_stations(frame: _Frame, anatomy: _Anatomy) -> dict[str, tuple[float, float, float]]:
    tu, tv = anatomy.trachea_uv
    r = anatomy.trachea_r
    return {
        "right paratracheal region": (tu - r - 0.1 * anatomy.cavity_semi_u, tv, frame.w_at(anatomy.carina_t + 0.1)),
        "subcarinal region": (tu, tv + 0.6 * r, frame.w_at(anatomy.carina_t - 0.06)),
        "prevascular region": (
            anatomy.aorta_asc_uv[0] + 0.05 * anatomy.cavity_semi_u,
            anatomy.aorta_asc_uv[1] - anatomy.aorta_r - 0.05 * anatomy.cavity_semi_v,
            frame.w_at(anatomy.arch_t - 0.05),
        ),
        "aortopulmonary window": (
            0.14 * anatomy.cavity_semi_u,
            tv - 0.2 * anatomy.cavity_semi_v,
            frame.w_at(anatomy.arch_t - 0.06),
        ),
    }


def _paint_lymph_nodes(canvas: _Canvas, anatomy: _Anatomy, enlarged: bool) -> dict | None:
    """Small normal mediastinal nodes; with lymphadenopathy, one or two enlarged (short axis 16 to 26 mm)."""
    frame, rng = canvas.frame, canvas.rng
    stations = _lymph_node_stations(frame, anatomy)
    names = list(stations)
    for name in names:  # small normal nodes, 3-6 mm
        if rng.random() < 0.6:
            r = rng.uniform(1.5, 3.0)
            canvas.paint(_ellipsoid(frame, stations[name], (r, r, r * 1.3)), HU_LYMPH_NODE, "mediastinum", jitter=5)
    if not enlarged:
        return None
    chosen = list(rng.choice(names, size=int(rng.integers(1, 3)), replace=False))
    sizes = []
    for name in chosen:
        short = float(rng.integers(16, 27))
        node = _ellipsoid(frame, stations[name], (short / 2, short / 2 * 1.1, short / 2 * 1.4))
        canvas.paint(node, HU_LYMPH_NODE, "mediastinum", jitter=5)
        sizes.append(short)
    return {"stations": [str(s) for s in chosen], "short_axis_mm": int(max(sizes))}


def _paint_esophagus(canvas: _Canvas, anatomy: _Anatomy, hernia: bool) -> dict | None:
    """Collapsed esophagus (a little air in its lumen) from the top down to the hiatus, where it bends left
    into the stomach; with a hiatal hernia, part of the stomach with an air-fluid level sits above the
    diaphragm behind the heart."""
    frame, rng = canvas.frame, canvas.rng
    eu, ev = anatomy.esophagus_uv
    w_hiatus = frame.w_at(anatomy.dome_t["left"] - 0.02)
    line = [(eu, ev, frame.w1[-1] + 5.0), (eu, ev, w_hiatus),
            (eu + 0.25 * anatomy.cavity_semi_u, ev - 0.3 * anatomy.cavity_semi_v, w_hiatus - 0.06 * frame.span)]
    tube = _tube(frame, line, anatomy.esophagus_r)
    canvas.paint(tube, HU_SOFT_TISSUE - 5, "esophagus", jitter=5)
    lumen = _tube(frame, line[:2], max(anatomy.esophagus_r * 0.3, 0.8)) & (
        rng.random(frame.shape[0])[:, None, None] < 0.3
    )
    canvas.paint(lumen, HU_AIR + 200, "esophagus", jitter=30)
    if not hernia:
        return None
    size = float(rng.uniform(0.35, 0.5) * anatomy.cavity_semi_v)
    cen = (eu + 0.05 * anatomy.cavity_semi_u, ev + 0.1 * size, w_hiatus + 0.5 * size)
    sac = _ellipsoid(frame, cen, (size, 0.8 * size, size))
    inner = _ellipsoid(frame, cen, (size - 2.5, 0.8 * size - 2.5, size - 2.5))
    canvas.paint(sac, HU_SOFT_TISSUE, "esophagus", jitter=5)
    canvas.paint(inner, HU_FLUID, "esophagus", jitter=5)
    canvas.paint(inner & (frame.v < cen[1] - 0.1 * size), HU_AIR, "esophagus", jitter=5)
    return {"size_mm": int(round(2 * size))}


def _paint_airways(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Trachea from the top of the scan to the carina, then both main bronchi: air with a thin wall."""
    frame = canvas.frame
    tu, tv = anatomy.trachea_uv
    w_car = frame.w_at(anatomy.carina_t)
    r_b = 0.7 * anatomy.trachea_r
    wall = max(1.5 * anatomy.scale * 2, 1.2)
    right = (
        tu - 0.3 * anatomy.cavity_semi_u,
        tv + 0.1 * anatomy.cavity_semi_v,
        w_car - 0.07 * frame.span,
    )  # right main bronchus: steeper
    left = (tu + 0.33 * anatomy.cavity_semi_u, tv + 0.12 * anatomy.cavity_semi_v, w_car - 0.1 * frame.span)
    trachea = [(tu, tv, frame.w1[-1] + 5.0), (tu, tv, w_car)]
    outer = _tube(frame, trachea, anatomy.trachea_r) | _tube(frame, [trachea[1], right], r_b) \
        | _tube(frame, [trachea[1], left], r_b)
    lumen = _tube(frame, trachea, anatomy.trachea_r - wall) | _tube(frame, [trachea[1], right], r_b - wall) \
        | _tube(frame, [trachea[1], left], r_b - wall)
    canvas.paint(outer, HU_SOFT_TISSUE, "trachea and bronchie", jitter=5)
    canvas.paint(lumen, HU_AIR, "trachea and bronchie", jitter=5)


def _paint_thyroid(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Two thyroid lobes either side of the trachea and the isthmus in front of it, in the top slices."""
    frame = canvas.frame
    tu, tv = anatomy.trachea_uv
    lobe_semi = (max(6.0 * anatomy.scale, 3.0), max(10.0 * anatomy.scale, 4.0), 0.09 * frame.span)
    w = frame.w_at(0.93)
    gland = frame.zeros()
    for s in (-1.0, 1.0):
        gland |= _ellipsoid(frame, (tu + s * (anatomy.trachea_r + lobe_semi[0] + 1.0), tv - 0.3 * anatomy.trachea_r, w),
                            lobe_semi)
    gland |= _ellipsoid(frame, (tu, tv - anatomy.trachea_r - lobe_semi[0] * 0.5, w - 0.03 * frame.span),
                        (anatomy.trachea_r, lobe_semi[0] * 0.5, 0.03 * frame.span))
    canvas.paint(gland, HU_THYROID, "thyroid", jitter=5)


def _paint_breasts(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Breast fat with fibroglandular tissue, in front of the pectoral muscles."""
    frame, rng = canvas.frame, canvas.rng
    breasts = _breast_volume(frame, anatomy)
    muscle_layer = _elliptic_cylinder(
        frame, (0.0, 0.0), (anatomy.body_semi_u - anatomy.fat, anatomy.body_semi_v - anatomy.fat)
    )
    breasts &= ~muscle_layer
    canvas.paint(breasts, HU_FAT, "breast", jitter=8)
    glandular = breasts & (rng.random(frame.shape) < (0.5 if anatomy.sex == "F" else 0.15))
    glandular = ndimage.binary_opening(glandular) & breasts
    canvas.paint(glandular, HU_GLANDULAR, "breast", jitter=8)


def _paint_spine(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Vertebral bodies (cortex and cancellous bone) with discs, spinal canal, laminae and spinous processes."""
    frame = canvas.frame
    top, bottom = frame.w1[-1] + 5.0, frame.w1[0] - 5.0
    axis = [(0.0, anatomy.spine_v, top), (0.0, anatomy.spine_v, bottom)]
    body = _tube(frame, axis, anatomy.spine_r)
    canal_r = 0.35 * anatomy.spine_r
    canal_v = anatomy.spine_v + anatomy.spine_r + canal_r + 1.0
    arch = _tube(frame, [(0.0, canal_v, top), (0.0, canal_v, bottom)], canal_r + 2.5)
    canal = _tube(frame, [(0.0, canal_v, top), (0.0, canal_v, bottom)], canal_r)
    spinous_end = anatomy.body_semi_v - anatomy.fat - 2.0
    spinous = _all_slices(frame, (np.abs(frame.u) < 2.0) & (frame.v > canal_v) & (frame.v < spinous_end))
    transverse = _all_slices(frame, (np.abs(frame.u) < anatomy.spine_r * 1.6) & (np.abs(frame.v - canal_v + 0.5) < 2.0))
    period = 28.0 * anatomy.scale * 1.0 + 4.0
    disc_level = ((frame.w - frame.w1[0]) % period) < max(5.0 * anatomy.scale, 2.0)
    canvas.paint(body | arch | spinous | transverse, HU_CORTICAL_BONE, "bone", jitter=40)
    canvas.paint(_tube(frame, axis, anatomy.spine_r - 1.5), HU_CANCELLOUS_BONE, "bone", jitter=30)
    canvas.paint(body & disc_level, HU_DISC, None, jitter=8)
    canvas.paint(canal, HU_CSF, None, jitter=5)


def _paint_ribs(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Ribs in the band outside the cavity: each runs obliquely down toward the front, so an axial slice cuts
    several of them into arcs; cortical rims with marrow inside. The anterior midline is left to the sternum
    and the posterior midline to the spine."""
    frame = canvas.frame
    outer = _elliptic_cylinder(
        frame,
        (0.0, anatomy.cav_v),
        (anatomy.cavity_semi_u + anatomy.rib, anatomy.cavity_semi_v + anatomy.rib),
        (0.08, 0.97),
    )
    inner = _elliptic_cylinder(frame, (0.0, anatomy.cav_v), (anatomy.cavity_semi_u, anatomy.cavity_semi_v))
    band = outer & ~inner
    theta = np.abs(
        np.arctan2(frame.u / anatomy.cavity_semi_u, (frame.v - anatomy.cav_v) / anatomy.cavity_semi_v)
    )  # 0 posterior, pi anterior
    arc_mm = theta * 0.5 * (anatomy.cavity_semi_u + anatomy.cavity_semi_v)
    period = 26.0 * anatomy.scale + 4.0
    height = max(10.0 * anatomy.scale, 3.5)
    phase = ((frame.w + 0.3 * arc_mm) / period + anatomy.rib_phase) % 1.0
    ribs = band & (phase < height / period)
    ribs &= ~((np.abs(frame.u) < 0.22 * anatomy.cavity_semi_u) & (frame.v < anatomy.cav_v))
    ribs &= ~(np.abs(frame.u) < 0.15 * anatomy.cavity_semi_u)
    canvas.paint(ribs, HU_CORTICAL_BONE, "bone", jitter=40)
    core = ribs & (np.abs(phase - 0.5 * height / period) < 0.25 * height / period)
    canvas.paint(core, HU_RIB, "bone", jitter=30)


def _sternum(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    front = anatomy.cav_v - anatomy.cavity_semi_v
    return (
        (np.abs(frame.u) < 0.12 * anatomy.cavity_semi_u)
        & (frame.v >= front - anatomy.rib)
        & (frame.v <= front)
        & (frame.t > 0.28)
        & (frame.t < 0.9)
    )


def _paint_sternum(canvas: _Canvas, anatomy: _Anatomy, wires: bool) -> dict | None:
    """Sternum (cortex around cancellous bone); after a sternotomy, steel wires loop around it."""
    frame, rng = canvas.frame, canvas.rng
    sternum = _sternum(frame, anatomy)
    canvas.paint(sternum, HU_CORTICAL_BONE, "bone", jitter=40)
    core = ndimage.binary_erosion(sternum, structure=np.ones((1, 3, 3), bool), iterations=1)
    canvas.paint(core, HU_CANCELLOUS_BONE + 60, "bone", jitter=30)
    if not wires:
        return None
    rim = ndimage.binary_dilation(sternum, structure=np.ones((1, 3, 3), bool), iterations=2) & ~sternum
    slices = np.flatnonzero(sternum.any(axis=(1, 2)))
    n = min(len(slices), int(rng.integers(4, 7)))
    levels = slices[np.linspace(0, len(slices) - 1, n).astype(int)] if n else []
    for z in levels:
        loop = np.zeros_like(sternum)
        loop[z] = rim[z]
        canvas.paint(loop, HU_METAL, "bone", jitter=100)
    return {"device": "sternotomy wires", "region": "bone", "count": int(len(levels))}


def _paint_pleura(canvas: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """The pleura: the outer 2 voxels (in-plane) of the lung space.
    Returns (lungs, pleura) masks."""
    space = canvas.region("lung")
    inner = ndimage.binary_erosion(space, structure=_CROSS_2D, iterations=2, border_value=1)
    pleura = space & ~inner
    canvas.paint(pleura, HU_PLEURA, "pleura", jitter=40)
    return inner, pleura


_CROSS_2D = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbourhood


def _paint_pleural_effusion(canvas: _Canvas, anatomy: _Anatomy, lung_space: dict, side: str) -> dict:
    """Fluid layering in the dependent (posterior) pleural space of one side, deepest at the base."""
    frame, rng = canvas.frame, canvas.rng
    depth = float(rng.integers(18, 36))
    top_t = anatomy.dome_t[side] + rng.uniform(0.25, 0.35)
    back = anatomy.cav_v + anatomy.cavity_semi_v * np.sqrt(np.clip(1 - (frame.u / anatomy.cavity_semi_u) ** 2, 0, 1))
    taper = np.clip((top_t - frame.t) / (top_t - anatomy.dome_t[side] + 1e-6), 0, 1)
    fluid = lung_space[side] & (frame.v > back - depth * taper) & (taper > 0)
    fluid &= (canvas.region("lung") | canvas.region("pleura"))
    canvas.paint(fluid, HU_FLUID, "pleura", jitter=6)
    return {"depth_mm": int(depth), "voxels": int(fluid.sum())}


def _lobes(frame: _Frame, anatomy: _Anatomy, lungs: np.ndarray) -> dict[str, np.ndarray]:
    """Lobes by fissure planes: the oblique fissures run from posterior-superior to anterior-inferior; the
    right horizontal fissure splits upper from middle lobe."""
    oblique = frame.w_at(anatomy.fissure_t) + 0.9 * (frame.v - anatomy.cav_v)
    lower = frame.w < oblique
    upper_right = frame.w > frame.w_at(anatomy.horizontal_fissure_t)
    right, left = lungs & (frame.u < 0), lungs & (frame.u > 0)
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


def _place_in(rng: np.random.Generator, frame: _Frame, mask: np.ndarray, radius_mm: float,
              tries: int = 60) -> tuple[int, int, int] | None:
    """A random voxel of `mask` around which a sphere of radius_mm fits inside it (None if none found)."""
    cand = np.flatnonzero(mask)
    if cand.size == 0:
        return None
    r_vox = [max(int(np.ceil(radius_mm / s)) - (1 if i == 0 else 0), 0) for i, s in enumerate(frame.spacing_zyx)]
    for _ in range(tries):
        idx = np.unravel_index(int(cand[rng.integers(cand.size)]), mask.shape)
        if _fits(mask, idx, r_vox):
            return tuple(int(i) for i in idx)
    # fall back to the deepest voxel of the mask
    dist = ndimage.distance_transform_edt(mask, sampling=frame.spacing_zyx)
    return tuple(int(i) for i in np.unravel_index(int(dist.argmax()), mask.shape))


def _paint_nodule(canvas: _Canvas, anatomy: _Anatomy, lobes: dict, lungs: np.ndarray) -> dict:
    """A solid, slightly ellipsoidal nodule inside one lobe."""
    frame, rng = canvas.frame, canvas.rng
    names = [n for n in lobes if lobes[n].sum() > 50] or list(lobes)
    lobe = str(rng.choice(names))
    size = float(rng.integers(14, 31))
    idx = _place_in(rng, frame, lobes[lobe] & lungs, size / 2 + 1.0)
    if idx is None:
        idx = tuple(s // 2 for s in frame.shape)
    center = frame.point_of(idx)
    semi = [size / 2 * rng.uniform(0.9, 1.1) for _ in range(3)]
    canvas.paint(_ellipsoid(frame, center, semi) & lungs, HU_NODULE, False, jitter=10)
    side, part = lobe.split(" ", 1)
    return {"side": side, "lobe": part, "size_mm": int(size), "center_index_zyx": list(idx)}


def _paint_consolidation(canvas: _Canvas, anatomy: _Anatomy, lobes: dict, lungs: np.ndarray, avoid: str | None) -> dict:
    """Airless lung (soft-tissue density with a few air bronchograms) filling part of one lobe."""
    frame, rng = canvas.frame, canvas.rng
    names = [n for n in lobes if lobes[n].sum() > 200 and n != avoid] or list(lobes)
    lobe = str(rng.choice(names))
    region = lobes[lobe] & lungs
    idx = _place_in(rng, frame, region, 4.0)
    if idx is None:
        idx = tuple(s // 2 for s in frame.shape)
    center = frame.point_of(idx)
    semi = (
        rng.uniform(0.3, 0.4) * anatomy.cavity_semi_u,
        rng.uniform(0.4, 0.55) * anatomy.cavity_semi_v,
        rng.uniform(0.12, 0.18) * frame.span,
    )
    blob = _ellipsoid(frame, center, semi) & region
    canvas.paint(blob, HU_SOFT_TISSUE - 5, False, jitter=10)
    bronchus = _tube(frame, [center, (center[0] + semi[0] * 0.8 * np.sign(center[0]), center[1], center[2])], 1.0)
    canvas.paint(bronchus & blob, HU_AIR + 100, False, jitter=30)
    side, part = lobe.split(" ", 1)
    return {"side": side, "lobe": part, "voxels": int(blob.sum())}


def _paint_emphysema(canvas: _Canvas, anatomy: _Anatomy, lungs: np.ndarray) -> dict:
    """Patchy low attenuation (centrilobular emphysema) in the upper lung zones, plus a few bullae."""
    frame, rng = canvas.frame, canvas.rng
    nz, ny, nx = frame.shape
    coarse = rng.random((max(nz // 3, 2), max(ny // 8, 2), max(nx // 8, 2)))
    field = ndimage.zoom(coarse, (nz / coarse.shape[0], ny / coarse.shape[1], nx / coarse.shape[2]), order=1)
    field = field[:nz, :ny, :nx]
    if field.shape != frame.shape:
        field = np.pad(field, [(0, n - s) for n, s in zip(frame.shape, field.shape)], mode="edge")
    upper = frame.t > 0.5
    patches = lungs & upper & (field > 0.45)
    canvas.paint(patches, HU_EMPHYSEMA, False, jitter=8)
    for _ in range(int(rng.integers(1, 4))):
        idx = _place_in(rng, frame, lungs & upper, 3.0, tries=20)
        if idx is not None:
            r = rng.uniform(3.0, 6.0)
            canvas.paint(_ellipsoid(frame, frame.point_of(idx), (r, r, r)) & lungs, HU_BULLA, False, jitter=5)
    return {"zone": "upper", "voxels": int(patches.sum())}


def _paint_aortic_calcification(canvas: _Canvas, anatomy: _Anatomy, line: list, below: np.ndarray) -> dict:
    """Bright calcified plaques in the aortic wall along the arch and descending aorta."""
    frame, rng = canvas.frame, canvas.rng
    pts = np.asarray(line[1:], dtype=float)
    n = int(rng.integers(12, 25))
    for _ in range(n):
        seg = int(rng.integers(len(pts) - 1))
        s = rng.uniform(0, 1)
        p = pts[seg] + s * (pts[seg + 1] - pts[seg])
        ang = rng.uniform(0, 2 * np.pi)
        off = np.array([np.cos(ang), np.sin(ang), 0.0]) * anatomy.aorta_r * 0.95
        speck = _ellipsoid(frame, p + off, (2.0, 2.0, 3.0))
        canvas.paint(speck, float(rng.uniform(*HU_CALCIFICATION)), False, jitter=30)
    return {"plaques": n}


def _paint_catheter(canvas: _Canvas, anatomy: _Anatomy) -> dict:
    """A central venous catheter entering from the right at the top and running down the superior vena cava
    to the cavoatrial junction."""
    frame = canvas.frame
    svc_u = anatomy.aorta_asc_uv[0] - anatomy.aorta_r - max(6.0 * anatomy.scale, 2.5) - 1.0
    svc_v = anatomy.aorta_asc_uv[1] + 2.0
    tip_w = anatomy.heart_center[2] + 0.5 * anatomy.heart_semi[2]
    line = [
        (-0.45 * anatomy.cavity_semi_u, anatomy.cav_v - 0.5 * anatomy.cavity_semi_v, frame.w1[-1] + 5.0),
        (svc_u, svc_v, frame.w_at(0.85)),
        (svc_u, svc_v, tip_w),
    ]
    tube = _tube(frame, line, 2.5)
    canvas.paint(tube, HU_CATHETER, "mediastinum", jitter=60)
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
    frame = _Frame(geometry0, center_xy, t_shift=rng.uniform(-0.03, 0.03))
    anatomy = _draw_anatomy(rng, frame, fov)
    canvas = _Canvas(frame, rng)
    found: list[dict] = []

    def record(kind: str, **details) -> None:
        label, region = FINDINGS[kind]
        found.append({"kind": kind, "label": label, "region": details.pop("region", region), **details})

    below = frame.w < _diaphragm_w(frame, anatomy)
    _paint_table(canvas, anatomy)
    _paint_body_wall(canvas, anatomy)
    cavity = _paint_cavity(canvas, anatomy, below)
    _paint_abdomen(canvas, anatomy, cavity, below)
    space = _lung_space(frame, anatomy, cavity, below)
    _paint_lungs(canvas, anatomy, space)
    enlarged = float(rng.uniform(1.3, 1.5)) if "cardiomegaly" in kinds else 1.0
    pe_mm = float(rng.integers(10, 21)) if "pericardial_effusion" in kinds else 0.0
    line = _paint_great_vessels(canvas, anatomy, below)  # the heart then covers the root of the aorta
    _paint_heart(canvas, anatomy, enlarged, pe_mm)
    nodes = _paint_lymph_nodes(canvas, anatomy, "lymphadenopathy" in kinds)
    hernia = _paint_esophagus(canvas, anatomy, "hiatal_hernia" in kinds)
    _paint_airways(canvas, anatomy)
    _paint_thyroid(canvas, anatomy)
    _paint_breasts(canvas, anatomy)
    _paint_spine(canvas, anatomy)
    _paint_ribs(canvas, anatomy)
    device = None
    if "medical_material" in kinds:
        device = "sternotomy wires" if rng.random() < 0.5 else "central venous catheter"
    wires = _paint_sternum(canvas, anatomy, device == "sternotomy wires")
    catheter = _paint_catheter(canvas, anatomy) if device == "central venous catheter" else None

    lungs, pleura = _paint_pleura(canvas)
    _paint_lung_vessels(canvas, anatomy, lungs)
    if "pleural_effusion" in kinds:
        side = str(rng.choice(["right", "left", "bilateral"]))
        details = {s: _paint_pleural_effusion(canvas, anatomy, space, s)
                   for s in (("right", "left") if side == "bilateral" else (side,))}
        record("pleural_effusion", side=side, depth_mm=max(d["depth_mm"] for d in details.values()))
        lungs = canvas.region("lung")
    lobes = _lobes(frame, anatomy, lungs)
    if "emphysema" in kinds:
        record("emphysema", **_paint_emphysema(canvas, anatomy, lungs))
    nodule = _paint_nodule(canvas, anatomy, lobes, lungs) if "lung_nodule" in kinds else None
    if nodule:
        record("lung_nodule", **nodule)
    if "consolidation" in kinds:
        avoid = f"{nodule['side']} {nodule['lobe']}" if nodule else None
        record("consolidation", **_paint_consolidation(canvas, anatomy, lobes, lungs, avoid))
    if "cardiomegaly" in kinds:
        record("cardiomegaly", scale=round(enlarged, 2))
    if pe_mm:
        record("pericardial_effusion", thickness_mm=int(pe_mm))
    if "arterial_wall_calcification" in kinds:
        record("arterial_wall_calcification", **_paint_aortic_calcification(canvas, anatomy, line, below))
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

    hu = ndimage.gaussian_filter(canvas.hu, sigma=[BLUR_SIGMA_MM / s for s in frame.spacing_zyx], mode="nearest")
    hu += rng.normal(0.0, NOISE_SD_HU, size=hu.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), HU_MIN_STORED, HU_MAX_STORED).astype(np.int16)
    masks = {r: canvas.label == _LABEL_OF[r] for r in REGIONS}
    anatomy_record = {
        "sex": anatomy.sex,
        "body_semi_axes_mm": [round(anatomy.body_semi_u, 1), round(anatomy.body_semi_v, 1)],
        "cardiothoracic_ratio": round(float(anatomy.heart_semi[0] * enlarged / anatomy.cavity_semi_u), 2),
    }
    geometry = PhantomGeometry(geometry0.size, geometry0.spacing, geometry0.origin, anatomy=anatomy_record)
    return hu, masks, found, geometry
