"""Synthetic datasets written to disk in the real published formats.

No dataset can be downloaded where this project runs, so the built-in data is drawn here and
written exactly as the real files are laid out; the same loaders read both.

- ``make_fundus``: colour fundus photographs in an EyePACS folder (``trainLabels.csv``,
  ``train/<patient>_<left|right>.jpeg``, ``retinopathy_solution.csv`` + ``test/`` for ~20% of the
  patients). DR grade 0-4 with EyePACS-like priors; the grade causes lesions (microaneurysms,
  haemorrhages from grade 2, exudates from 3, new-vessel tangles at 4) whose counts and
  visibility overlap between grades, so the task is learnable but not trivial.
- ``make_chexpert``: chest X-rays in a ``CheXpert-v1.0-small/`` folder (``train.csv``,
  ``valid.csv`` with the exact 19-column header). Each competition pathology has its own visual
  cue; labels are correlated; train labels include -1.0 (uncertain) and blanks; some lateral views.
  The returned root is the folder that *contains* ``CheXpert-v1.0-small/`` (load_dataset accepts
  either).
- ``make_natural``: dead-leaves images (Lee, Mumford & Huang 2001; Baradad et al. 2021), one
  class per dead-leaves process (shape, orientation, palette, size law, texture), ImageFolder.

Every image draws from its own ``numpy.random.default_rng([seed, kind, index])``, so the files are
byte-identical for a seed whatever the number of worker processes. Drawing is vectorised numpy.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from transfusion.data.chexpert import CHEXPERT_COLUMNS
from transfusion.errors import ConfigError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
GRADE_PRIOR = (0.73, 0.07, 0.15, 0.025, 0.025)
KINDS = ("fundus", "chexpert", "natural")
_KIND_ID = {"fundus": 1, "chexpert": 2, "natural": 3, "labels": 99}


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _KIND_ID[kind], int(index)])


def _grid(h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, origin at the image centre, in units of ``scale`` pixels."""
    y = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / scale
    x = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / scale
    return y[:, None], x[None, :]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _blobs(canvas: np.ndarray, cy, cx, sigma, amp, exponent: float = 2.0) -> None:
    """Add Gaussian-like blobs (in pixels) to a 2-D canvas, each in its own small window."""
    h, w = canvas.shape
    for y0, x0, s, a in zip(cy, cx, sigma, amp):
        r = int(math.ceil(3 * s)) + 1
        ya, yb, xa, xb = max(int(y0) - r, 0), min(int(y0) + r + 1, h), max(int(x0) - r, 0), min(int(x0) + r + 1, w)
        if ya >= yb or xa >= xb:
            continue
        yy = (np.arange(ya, yb, dtype=np.float32) + 0.5 - y0)[:, None]
        xx = (np.arange(xa, xb, dtype=np.float32) + 0.5 - x0)[None, :]
        d2 = (yy * yy + xx * xx) / (s * s)
        canvas[ya:yb, xa:xb] += a * np.exp(-0.5 * d2 ** (exponent / 2))


def _walk(rng, start, heading, length, n, curvature, wiggle) -> np.ndarray:
    """A smooth random curve: (n, 2) points (y, x) in pixels."""
    turns = curvature + wiggle * rng.standard_normal(n)
    ang = heading + np.cumsum(turns) * (length / n)
    steps = np.stack([np.sin(ang), np.cos(ang)], 1) * (length / n)
    return start[None, :] + np.cumsum(steps, 0)


def _lines(shape, curves, width_px: float) -> np.ndarray:
    """Rasterise polylines of a given width to a soft [0, 1] map (stamp dense points, blur)."""
    h, w = shape
    canvas = np.zeros(shape, np.float32)
    for pts in curves:
        seg = np.diff(pts, axis=0)
        lens = np.hypot(seg[:, 0], seg[:, 1])
        k = np.maximum(np.ceil(lens / 0.5).astype(int), 1)
        t = np.concatenate([np.arange(kk) / kk for kk in k])
        idx = np.repeat(np.arange(len(seg)), k)
        p = pts[idx] + seg[idx] * t[:, None]
        iy, ix = np.rint(p[:, 0]).astype(int), np.rint(p[:, 1]).astype(int)
        ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        canvas[iy[ok], ix[ok]] = 1.0
    sigma = max(width_px / 2.0, 0.5)
    out = gaussian_filter(canvas, sigma) * (math.sqrt(2 * math.pi) * sigma)
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Fundus
# ----------------------------------------------------------------------------------------------
# Expected lesion counts per grade (multiplied by a per-image visibility factor)
_MA = (0.5, 4.0, 7.0, 9.0, 10.0)
_HEM = (0.15, 0.5, 3.5, 6.0, 7.0)
_EXU = (0.05, 0.15, 0.8, 5.0, 5.0)
_NV = (0.0, 0.0, 0.0, 0.3, 2.5)


def draw_fundus(size: int, grade: int, eye: str, rng: np.random.Generator) -> np.ndarray:
    """One fundus photo, uint8 (size, round(1.25 size), 3): circular field of view on black."""
    h, w = size, int(round(size * 1.25))
    rad = h / 2.0
    v, u = _grid(h, w, rad)  # unit = field-of-view radius
    r = np.sqrt(u * u + v * v)
    R = 0.97
    fov = np.clip((R - r) * rad / 1.5, 0.0, 1.0)
    base = np.array([0.78, 0.36, 0.15], np.float32) * rng.uniform(0.8, 1.1)
    base = base * np.exp(rng.normal(0, 0.06, 3)).astype(np.float32)
    vign = 1.0 - rng.uniform(0.35, 0.55) * (r / R) ** 2
    # choroidal texture: a few low-frequency waves
    tex = np.zeros((h, w), np.float32)
    for _ in range(3):
        f, a = rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)
        tex += np.cos(f * (u * np.cos(a) + v * np.sin(a)) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    img = base[None, None, :] * (vign * (1 + 0.03 * tex))[..., None]
    side = 1.0 if eye == "right" else -1.0
    dx, dy = side * rng.uniform(0.33, 0.45), rng.uniform(-0.08, 0.08)
    disc_r = rng.uniform(0.10, 0.13)
    disc = np.exp(-(((u - dx) ** 2 + (v - dy) ** 2) / disc_r ** 2) ** 2)
    img += disc[..., None] * np.array([0.22, 0.30, 0.22], np.float32)
    fx, fy = dx - side * rng.uniform(0.7, 0.8), dy + rng.uniform(0.0, 0.08)
    fovea = np.exp(-((u - fx) ** 2 + (v - fy) ** 2) / 0.1 ** 2)
    img *= (1.0 - 0.3 * fovea)[..., None]
    # vessels: four arcades from the disc with branches
    cx_px, cy_px = w / 2 + dx * rad, h / 2 + dy * rad
    start = np.array([cy_px, cx_px], np.float32)
    main, thin = [], []
    for up in (-1.0, 1.0):
        for temporal in (True, False):
            heading = math.atan2(up * 0.6, -side if temporal else side) + rng.normal(0, 0.15)
            curv = up * side * (1.6 if temporal else 0.5) / rad  # temporal arcades bend round the fovea
            length = rad * rng.uniform(0.9, 1.3) * (1.0 if temporal else 0.7)
            pts = _walk(rng, start, heading, length, 48, curv, 1.5 / rad)
            main.append(pts)
            for _ in range(rng.integers(2, 4)):
                j = int(rng.integers(8, 44))
                thin.append(_walk(rng, pts[j], heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1),
                                  rad * rng.uniform(0.25, 0.5), 20, 0.0, 2.5 / rad))
    vmap = 0.9 * _lines((h, w), main, max(1.0, 0.017 * h)) + 0.6 * _lines((h, w), thin, max(0.7, 0.008 * h))
    img *= (1.0 - np.clip(vmap, 0, 1)[..., None] * np.array([0.35, 0.6, 0.55], np.float32))
    # lesions: counts grow with the grade, scaled by a per-image visibility
    vis = rng.uniform(0.35, 1.3)

    def places(n):
        rr = np.sqrt(rng.uniform(0.0, 0.8 ** 2, n)) * rad
        th = rng.uniform(0, 2 * np.pi, n)
        return h / 2 + rr * np.sin(th), w / 2 + rr * np.cos(th)

    dark = np.zeros((h, w), np.float32)
    n_ma = rng.poisson(_MA[grade] * vis)
    y0, x0 = places(n_ma)
    _blobs(dark, y0, x0, np.full(n_ma, max(0.6, 0.005 * h)), rng.uniform(0.5, 0.9, n_ma))
    n_h = rng.poisson(_HEM[grade] * vis)
    y0, x0 = places(n_h)
    _blobs(dark, y0, x0, rng.uniform(0.012, 0.024, n_h) * h + 0.6, rng.uniform(0.5, 0.85, n_h), exponent=3.0)
    if _NV[grade]:
        n_nv = rng.poisson(_NV[grade] * vis) + (grade == 4)
        tangles = []
        for _ in range(n_nv):
            c = np.array([cy_px, cx_px]) + rng.normal(0, 0.25 * rad, 2)
            tangles.append(_walk(rng, c, rng.uniform(0, 2 * np.pi), rad * 0.5, 40, 14 / rad, 10 / rad))
        dark += 0.8 * _lines((h, w), tangles, max(0.7, 0.006 * h))
    img *= (1.0 - np.clip(dark, 0, 1)[..., None] * np.array([0.45, 0.8, 0.75], np.float32))
    bright = np.zeros((h, w), np.float32)
    n_e = rng.poisson(_EXU[grade] * vis)
    if n_e:
        cy, cx = places(1)
        k = rng.integers(2, 6, n_e)  # exudates come in small clusters
        ey = np.repeat(cy + rng.normal(0, 0.15 * rad, n_e), k) + rng.normal(0, 0.04 * rad, k.sum())
        ex = np.repeat(cx + rng.normal(0, 0.15 * rad, n_e), k) + rng.normal(0, 0.04 * rad, k.sum())
        _blobs(bright, ey, ex, rng.uniform(0.005, 0.011, k.sum()) * h + 0.5, rng.uniform(0.5, 1.0, k.sum()))
    img += np.clip(bright, 0, 1)[..., None] * np.array([0.4, 0.38, 0.05], np.float32)
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    img *= fov[..., None]
    return _to_uint8(img)


def _fundus_job(args) -> None:
    path, size, grade, eye, seed, index = args
    arr = draw_fundus(size, grade, eye, _rng(seed, "fundus", index))
    Path(path).write_bytes(_encode(arr, "JPEG"))


def fundus_labels(n_images: int, seed: int) -> list[tuple[str, str, int]]:
    """(patient, eye, grade) per image: two eyes per patient, grades correlated within a patient."""
    rng = _rng(seed, "labels", 1)
    out = []
    n_pat = (n_images + 1) // 2
    for p in range(n_pat):
        g = int(rng.choice(5, p=GRADE_PRIOR))
        for eye in ("left", "right"):
            if len(out) == n_images:
                break
            ge = g if rng.random() < 0.75 else int(rng.choice(5, p=GRADE_PRIOR))
            out.append((str(10 + p), eye, ge))
    return out


def make_fundus(out_dir, n_images: int, image_size: int, seed: int, *, workers: int | None = None,
                test_fraction: float = 0.2) -> Path:
    """Write an EyePACS folder of ``n_images`` synthetic fundus photos; returns ``out_dir``."""
    from transfusion.data.splits import hash_unit

    out = _prepare(out_dir, n_images, image_size)
    labels = fundus_labels(n_images, seed)
    (out / "train").mkdir()
    (out / "test").mkdir()
    jobs, train_rows, test_rows = [], [], []
    for i, (pid, eye, g) in enumerate(labels):
        is_test = hash_unit(pid, seed) < test_fraction
        name = f"{pid}_{eye}"
        jobs.append((str(out / ("test" if is_test else "train") / f"{name}.jpeg"), image_size, g, eye, seed, i))
        if is_test:
            test_rows.append([name, g, "Public" if hash_unit(name, seed + 1) < 0.3 else "Private"])
        else:
            train_rows.append([name, g])
    _run(_fundus_job, jobs, workers)
    _write_csv(out / "trainLabels.csv", ["image", "level"], train_rows)
    _write_csv(out / "retinopathy_solution.csv", ["image", "level", "Usage"], test_rows)
    _manifest(out, "fundus", n_images, image_size, seed)
    return out


# ----------------------------------------------------------------------------------------------
# Chest X-ray
# ----------------------------------------------------------------------------------------------
CHEX5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def chest_truth(rng) -> dict[str, bool]:
    """Correlated ground truth for the 5 competition pathologies (heart failure links 3 of them)."""
    card = rng.random() < 0.18
    edema = rng.random() < 0.12 + 0.30 * card
    eff = rng.random() < 0.18 + 0.25 * edema + 0.10 * card
    cons = rng.random() < 0.12
    atel = rng.random() < 0.15 + 0.15 * eff
    return {"Atelectasis": atel, "Cardiomegaly": card, "Consolidation": cons, "Edema": edema,
            "Pleural Effusion": eff}


def draw_chest(size: int, truth: dict[str, bool], frontal: bool, rng: np.random.Generator) -> np.ndarray:
    """One chest X-ray, uint8 gray (round(1.125 size), size). Bright = dense."""
    h, w = size + size // 8, size
    v, u = _grid(h, w, w / 2.0)  # unit = half the width
    def ell(cx, cy, rx, ry, soft=0.04):
        d = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
        return np.clip((1.0 - d) / soft, 0.0, 1.0)
    img = 0.06 + 0.42 * ell(0, 0.1, 0.95, 1.25, 0.15)
    sev = {k: rng.uniform(0.25, 1.0) for k in truth}  # faint findings overlap with normals
    if not frontal:  # lateral: one big lung field, spine behind, heart in front
        lung = ell(0.0, -0.05, 0.62, 0.72, 0.1)
        img = img - 0.26 * lung
        img += 0.25 * ell(0.7, 0.05, 0.12, 0.95, 0.1)  # spine
        img += 0.18 * ell(-0.3, 0.35, 0.3 + 0.12 * truth["Cardiomegaly"], 0.3, 0.2)
        if truth["Pleural Effusion"]:
            img += 0.25 * lung * (v > 0.45).astype(np.float32)
    else:
        lx, rx_ = rng.uniform(0.36, 0.46), rng.uniform(0.36, 0.46)
        lungs = [ell(-lx, -0.05, 0.32, 0.62, 0.12), ell(rx_, -0.05, 0.32, 0.62, 0.12)]
        lungmask = np.maximum(lungs[0], lungs[1])
        img = img - 0.28 * lungmask
        # ribs: curved bright bands inside the lungs
        freq = rng.uniform(6.0, 7.5)
        ribs = 0.5 + 0.5 * np.cos(2 * np.pi * freq * (v - 0.25 * u * u) + rng.uniform(0, 2 * np.pi))
        img += 0.07 * lungmask * ribs ** 3
        # mediastinum and spine
        img += 0.22 * np.clip((0.14 - np.abs(u)) / 0.04, 0, 1) * (v < 0.5)
        # heart: wider when Cardiomegaly
        hw = rng.uniform(0.25, 0.33) + (rng.uniform(0.06, 0.14) * sev["Cardiomegaly"] if truth["Cardiomegaly"] else 0)
        img += 0.30 * ell(0.08, 0.33, hw, 0.27, 0.15)
        # costophrenic meniscus: fluid line rising laterally; a faint blunted angle in some normals
        eff = truth["Pleural Effusion"]
        if eff or rng.random() < 0.15:
            for k, cx in ((0, -lx), (1, rx_)):
                if k == int(rng.random() < 0.5) or rng.random() < 0.5:
                    lateral = np.clip((u - cx) * np.sign(cx) / 0.32, -1, 1)  # +1 at the outer edge
                    depth = rng.uniform(0.12, 0.35) * sev["Pleural Effusion"] if eff else rng.uniform(0.0, 0.08)
                    level = 0.57 - depth - 0.15 * (lateral + 1) ** 2
                    fluid = np.clip((v - level) / 0.05, 0, 1) * lungs[k]
                    img += (0.08 if eff else 0.05) * fluid
        if truth["Edema"]:  # bilateral perihilar haze with interstitial texture
            hil = np.exp(-((np.abs(u) - 0.3) ** 2 + (v - 0.0) ** 2) / 0.18)
            tex = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(0.6, w / 90.0))
            tex /= tex.std() + 1e-6
            img += lungmask * hil * sev["Edema"] * (0.06 + 0.03 * tex)
        if truth["Consolidation"]:  # dense lobar blob in one lung
            cx = (-lx if rng.random() < 0.5 else rx_) + rng.uniform(-0.12, 0.12)
            cy = rng.uniform(-0.35, 0.35)
            blob = ell(cx, cy, rng.uniform(0.14, 0.2), rng.uniform(0.16, 0.25), 0.4)
            img += 0.2 * sev["Consolidation"] * blob * lungmask
        if truth["Atelectasis"]:  # plate-like linear band in a lower zone
            cx = (-lx if rng.random() < 0.5 else rx_)
            cy, ang = rng.uniform(0.1, 0.4), rng.uniform(-0.35, 0.35)
            along = (u - cx) * np.cos(ang) + (v - cy) * np.sin(ang)
            across = -(u - cx) * np.sin(ang) + (v - cy) * np.cos(ang)
            band = np.clip((0.035 - np.abs(across)) / 0.02, 0, 1) * np.clip((0.24 - np.abs(along)) / 0.05, 0, 1)
            img += 0.22 * sev["Atelectasis"] * band
        # look-alikes in any image: a faint blob (vessel end-on, nipple shadow) and a faint line (scapula edge)
        if rng.random() < 0.3:
            img += 0.1 * ell(rng.choice([-lx, rx_]) + rng.uniform(-0.15, 0.15), rng.uniform(-0.4, 0.4),
                             rng.uniform(0.06, 0.14), rng.uniform(0.06, 0.14), 0.5) * lungmask
        if rng.random() < 0.3:
            cx, cy, ang = rng.choice([-lx, rx_]), rng.uniform(-0.3, 0.4), rng.uniform(-0.6, 0.6)
            across = -(u - cx) * np.sin(ang) + (v - cy) * np.cos(ang)
            img += 0.07 * np.clip((0.03 - np.abs(across)) / 0.02, 0, 1) * lungmask
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return _to_uint8(img)


def _report(rng, positive: bool) -> str:
    """What a report-mined train label says: positives 1.0 or -1.0; negatives blank, 0.0 or -1.0."""
    x = rng.random()
    if positive:
        return "1.0" if x < 0.75 else "-1.0"
    return "" if x < 0.65 else ("0.0" if x < 0.9 else "-1.0")


def _chest_row(rng, path: str, truth: dict[str, bool], frontal: bool, sex: str, age: int, valid: bool):
    lab = {c: "" for c in CHEXPERT_COLUMNS[5:]}
    if valid:
        lab = {c: "0.0" for c in lab}
        for k, t in truth.items():
            lab[k] = "1.0" if t else "0.0"
        lab["No Finding"] = "0.0" if any(truth.values()) else "1.0"
        lab["Lung Opacity"] = "1.0" if truth["Edema"] or truth["Consolidation"] or truth["Atelectasis"] else "0.0"
    else:
        for k, t in truth.items():
            lab[k] = _report(rng, t)
        lab["No Finding"] = "" if any(truth.values()) else "1.0"
        if truth["Edema"] or truth["Consolidation"] or truth["Atelectasis"]:
            lab["Lung Opacity"] = "1.0"
        if truth["Consolidation"] and rng.random() < 0.5:
            lab["Pneumonia"] = "-1.0"
        if rng.random() < 0.4:
            lab["Support Devices"] = "1.0"
    ap = ("AP" if rng.random() < 0.7 else "PA") if frontal else ""
    return [path, sex, str(age), "Frontal" if frontal else "Lateral", ap] + [lab[c] for c in CHEXPERT_COLUMNS[5:]]


def _chest_job(args) -> None:
    path, size, truth, frontal, seed, index = args
    arr = draw_chest(size, truth, frontal, _rng(seed, "chexpert", index))
    Path(path).write_bytes(_encode(arr, "JPEG"))


def make_chexpert(out_dir, n_images: int, image_size: int, seed: int, *, workers: int | None = None,
                  valid_fraction: float = 0.1) -> Path:
    """Write ``out_dir/CheXpert-v1.0-small/{train.csv,valid.csv,train/,valid/}``; returns ``out_dir``."""
    out = _prepare(out_dir, n_images, image_size)
    base = out / "CheXpert-v1.0-small"
    rng = _rng(seed, "labels", 2)
    n_valid = int(round(n_images * valid_fraction)) if n_images >= 10 else 0
    rows = {"train": [], "valid": []}
    jobs = []
    patient = 0
    for split, n_target in (("train", n_images - n_valid), ("valid", n_valid)):
        count = 0
        while count < n_target:
            patient += 1
            sex, age = ("Male" if rng.random() < 0.55 else "Female"), int(rng.integers(18, 91))
            for study in range(1, int(rng.integers(1, 4)) + 1):
                if count >= n_target:
                    break
                truth = chest_truth(rng)
                views = [True] + ([False] if rng.random() < 0.2 else [])
                for k, frontal in enumerate(views, start=1):
                    if count >= n_target:
                        break
                    rel = f"{split}/patient{patient:05d}/study{study}/view{k}_{'frontal' if frontal else 'lateral'}.jpg"
                    (base / rel).parent.mkdir(parents=True, exist_ok=True)
                    rows[split].append(_chest_row(rng, f"CheXpert-v1.0-small/{rel}", truth, frontal, sex,
                                                  age, split == "valid"))
                    jobs.append((str(base / rel), image_size, truth, frontal, seed, len(jobs)))
                    count += 1
    _run(_chest_job, jobs, workers)
    _write_csv(base / "train.csv", list(CHEXPERT_COLUMNS), rows["train"])
    _write_csv(base / "valid.csv", list(CHEXPERT_COLUMNS), rows["valid"])
    _manifest(out, "chexpert", n_images, image_size, seed)
    return out


# ----------------------------------------------------------------------------------------------
# Natural images: a dead-leaves source
# ----------------------------------------------------------------------------------------------
# The pretraining stand-in for ImageNet is the dead-leaves model of natural images (Lee, Mumford
# & Huang 2001): opaque shapes of power-law sizes painted over each other, which reproduces the
# scale invariance and edge statistics of natural photographs. Baradad et al. ("Learning to See
# by Looking at Noise", NeurIPS 2021) found dead-leaves images teach generic low-level features.
# They train with a contrastive objective; here each class is one dead-leaves *process* (shape
# family, orientation, palette, size law, texture), so a supervised classifier has to see
# orientation, colour, scale and texture to tell the classes apart: the cues conv1 filters code.
LEAF_SHAPES = ("disc", "square", "bar", "ellipse")
LEAF_TEXTURES = ("flat", "grating")


def natural_class(c: int, seed: int) -> dict:
    """Class ``c``'s dead-leaves process, drawn once from the seed (the same for every image)."""
    rng = _rng(seed, "labels", 1000 + c)
    return {"shape": LEAF_SHAPES[c % len(LEAF_SHAPES)],
            "texture": LEAF_TEXTURES[(c // len(LEAF_SHAPES)) % len(LEAF_TEXTURES)],
            "angle": float(rng.uniform(0, np.pi)), "hue": float(rng.uniform(0, 1)),
            "hue_spread": float(rng.uniform(0.03, 0.25)), "saturation": float(rng.uniform(0.2, 0.95)),
            "alpha": float(rng.uniform(1.5, 3.0)), "freq": float(rng.uniform(1.5, 4.0))}


def _hsv(hue, s, v) -> np.ndarray:
    """HSV (arrays or scalars, hue in turns) to RGB, float32 (..., 3)."""
    h = (np.asarray(hue, np.float64) % 1.0) * 6.0
    s, v = np.asarray(s, np.float64), np.asarray(v, np.float64)
    k = lambda n: (n + h) % 6.0  # noqa: E731
    f = lambda n: v - v * s * np.clip(np.minimum(k(n), 4.0 - k(n)), 0.0, 1.0)  # noqa: E731
    return np.stack([f(5.0), f(3.0), f(1.0)], axis=-1).astype(np.float32)


def _leaf_radii(rng, n: int, alpha: float, r_min: float, r_max: float) -> np.ndarray:
    """``n`` radii from the power law p(r) ~ r^-alpha on [r_min, r_max] (inverse CDF)."""
    u = rng.uniform(0, 1, n)
    a = 1.0 - alpha
    return (r_min ** a + u * (r_max ** a - r_min ** a)) ** (1.0 / a)


def _leaf_mask(shape: str, yr, xr, r: float) -> np.ndarray:
    if shape == "disc":
        return xr * xr + yr * yr < r * r
    if shape == "square":
        return np.maximum(np.abs(xr), np.abs(yr)) < r * 0.85
    if shape == "bar":
        return (np.abs(xr) < r) & (np.abs(yr) < 0.3 * r)
    return (xr / r) ** 2 + (yr / (0.5 * r)) ** 2 < 1.0  # ellipse


def draw_natural(size: int, cls: dict, rng: np.random.Generator, n_leaves: int = 80) -> np.ndarray:
    """One dead-leaves image of class ``cls``: ``n_leaves`` leaves painted back to front, each
    with the class's shape at the class's orientation (+-0.2 rad), a colour from the class's
    palette, a power-law radius, and (class "grating") an oriented sinusoid inside."""
    y, x = _grid(size, size, size / 2.0)
    radii = _leaf_radii(rng, n_leaves, cls["alpha"], 0.08, 0.8)
    hues = cls["hue"] + rng.normal(0, cls["hue_spread"], n_leaves)
    sats = np.clip(cls["saturation"] + rng.normal(0, 0.1, n_leaves), 0, 1)
    colours = _hsv(hues, sats, rng.uniform(0.25, 1.0, n_leaves))
    img = colours[0] * np.ones((size, size, 1), np.float32)
    for k in range(1, n_leaves):
        cy, cx = rng.uniform(-1.1, 1.1, 2)
        th = cls["angle"] + rng.normal(0, 0.2)
        yr = (y - cy) * np.cos(th) - (x - cx) * np.sin(th)
        xr = (y - cy) * np.sin(th) + (x - cx) * np.cos(th)
        m = _leaf_mask(cls["shape"], yr, xr, radii[k])
        if not m.any():
            continue
        paint = colours[k][None, None, :]
        if cls["texture"] == "grating":
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * cls["freq"] * xr / max(radii[k], 0.15) + rng.uniform(0, 6.3))
            paint = paint * (0.45 + 0.55 * wave[..., None])
        img = np.where(m[..., None], paint, img)
    img = gaussian_filter(img, (0.5, 0.5, 0)) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img.astype(np.float32))


def _natural_job(args) -> None:
    path, size, cls, seed, index = args
    arr = draw_natural(size, cls, _rng(seed, "natural", index))
    Path(path).write_bytes(_encode(arr, "PNG"))


def make_natural(out_dir, n_images: int, image_size: int, n_classes: int, seed: int, *,
                 workers: int | None = None) -> Path:
    """Write ``out_dir/<class>/<index>.png`` (ImageFolder): ``n_images`` dead-leaves images
    spread over ``n_classes`` dead-leaves processes."""
    if n_classes < 2:
        raise ConfigError(f"n_classes must be at least 2, got {n_classes}")
    out = _prepare(out_dir, n_images, image_size)
    classes = [natural_class(c, seed) for c in range(n_classes)]
    names = [f"c{c:03d}_{k['shape']}_{k['texture']}" for c, k in enumerate(classes)]
    for nm in names:
        (out / nm).mkdir()
    jobs = [(str(out / names[i % n_classes] / f"{i:06d}.png"), image_size, classes[i % n_classes], seed, i)
            for i in range(n_images)]
    _run(_natural_job, jobs, workers)
    _manifest(out, "natural", n_images, image_size, seed, n_classes=n_classes, generator="dead leaves")
    return out


# ----------------------------------------------------------------------------------------------
# Plumbing
# ----------------------------------------------------------------------------------------------
def _prepare(out_dir, n_images: int, image_size: int) -> Path:
    if n_images < 1:
        raise ConfigError(f"n_images must be at least 1, got {n_images}")
    if image_size < 16:
        raise ConfigError(f"image_size must be at least 16 pixels, got {image_size}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: choose a new folder or remove it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    from transfusion.utils import atomic_write_text

    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(header)
    wr.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _manifest(out: Path, kind: str, n: int, size: int, seed: int, **extra) -> None:
    from transfusion.utils import atomic_write_json

    atomic_write_json(out / "synthetic.json", {"kind": kind, "n_images": n, "image_size": size, "seed": seed,
                                               "generator_version": GENERATOR_VERSION, **extra})


def _run(fn, jobs: list, workers: int | None) -> None:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 32:
        for j in jobs:
            fn(j)
        return
    chunk = max(1, len(jobs) // (workers * 8))
    with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(fn, jobs, chunksize=chunk):
            pass


def ensure_synthetic(kind: str, cache_root, n_images: int, image_size: int, seed: int,
                     n_classes: int = 100, workers: int | None = None,
                     test_images: int | None = None) -> Path:
    """Make a synthetic dataset once under ``cache_root`` and return the root for load_dataset.

    ``test_images`` (fundus and chexpert): about that many of the ``n_images`` form the held-out
    test split (fundus: retinopathy_solution.csv + test/; chexpert: valid.csv); default: the
    generators' own fractions (fundus 20%, chexpert 10%).

    The folder name carries every setting; a finished folder (``synthetic.json`` written last) is
    reused as it is. It is built in a temporary sibling and renamed, so a crash leaves no half set.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown synthetic kind {kind!r}: use one of {', '.join(KINDS)}")
    name = f"{kind}-n{n_images}-s{image_size}-seed{seed}-v{GENERATOR_VERSION}"
    if kind == "natural":
        name += f"-c{n_classes}"
    held_out = {}
    if test_images is not None and kind != "natural":
        if not 0 < test_images < n_images:
            raise ConfigError(f"test_images must be between 1 and n_images - 1 ({n_images - 1}), "
                              f"got {test_images}")
        held_out = {"fundus": {"test_fraction": test_images / n_images},
                    "chexpert": {"valid_fraction": test_images / n_images}}[kind]
        name += f"-t{test_images}"
    root = Path(cache_root) / name
    if (root / "synthetic.json").is_file():
        return root
    tmp = Path(cache_root) / f".{name}.{os.getpid()}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    log.info("making synthetic %s data: %d images at %d px (seed %d) in %s", kind, n_images, image_size, seed, root)
    if kind == "fundus":
        make_fundus(tmp, n_images, image_size, seed, workers=workers, **held_out)
    elif kind == "chexpert":
        make_chexpert(tmp, n_images, image_size, seed, workers=workers, **held_out)
    else:
        make_natural(tmp, n_images, image_size, n_classes, seed, workers=workers)
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root / "synthetic.json").is_file():  # lost a race to nobody: re-raise
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return root
