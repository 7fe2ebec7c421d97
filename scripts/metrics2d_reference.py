#!/usr/bin/env python3
"""Reference values for voxdiff's 2D mask scores (tests/metrics2d.rs).

Not run in CI: it needs scikit-learn, scikit-image, scipy, numpy and Pillow
(`pip install scikit-learn scikit-image scipy pillow`). It reads real masks
from ../shared/data (polyp_2d, skin_2d), perturbs each in fixed, exactly
reproducible ways (tests/metrics2d.rs builds the same perturbations), and
writes tests/data/metrics2d_reference.json with:

- iou, f1: sklearn.metrics.jaccard_score / f1_score on the flattened masks
  (default zero_division, so 0/0 gives 0.0 with a warning);
- wcov: the covering of the reference's regions by the prediction's
  (Arbelaez et al., TPAMI 2011), regions = 8-connected components of the
  foreground and of the background (scipy.ndimage.label);
- boundary f/precision/recall at 1..5 px: the DAVIS f_measure conventions
  (seg2bmap, dilation by skimage.morphology.disk, empty-boundary rules).

Usage: python3 scripts/metrics2d_reference.py [DATA_DIR]
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.ndimage as ndi
import skimage
import sklearn
from PIL import Image
from skimage.morphology import disk
from sklearn.metrics import f1_score, jaccard_score

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
MASKS = [
    "polyp_2d/masks/cju0qkwl35piu0993l0dewei2.png",
    "polyp_2d/masks/cju0roawvklrq0799vmjorwfv.png",
    "polyp_2d/masks/cju0qx73cjw570799j4n5cjze.png",
    "skin_2d/masks/ISIC_0024311.png",
    "skin_2d/masks/ISIC_0027001.png",
]
TOLERANCES = [1, 2, 3, 4, 5]


def perturb(m, name):
    """The perturbations of tests/metrics2d.rs (keep the two in step)."""
    h, w = m.shape
    y, x = np.mgrid[0:h, 0:w]
    if name == "identical":
        return m.copy()
    if name == "empty":
        return np.zeros_like(m)
    if name == "full":
        return np.ones_like(m)
    if name == "shift":  # content moves 7 down and 4 left
        p = np.zeros_like(m)
        p[7:, : w - 4] = m[: h - 7, 4:]
        return p
    if name == "dilate3":  # square of radius 3
        return ndi.binary_dilation(m, structure=np.ones((7, 7), bool))
    if name == "erode5":  # square of radius 5, outside = background
        return ndi.binary_erosion(m, structure=np.ones((11, 11), bool), border_value=0)
    if name == "cut_right_half":
        p = m.copy()
        p[:, w // 2 :] = False
        return p
    if name == "speckle":
        return m ^ ((x * 7 + y * 13) % 97 == 0)
    if name == "holes":
        hole = ((x // 8 + y // 8) % 5 == 0) & (x % 8 < 3) & (y % 8 < 3)
        return m & ~hole
    raise ValueError(name)


PERTURBATIONS = [
    "identical", "empty", "full", "shift", "dilate3", "erode5",
    "cut_right_half", "speckle", "holes",
]


def regions(m):
    s = np.ones((3, 3), bool)
    fg, nf = ndi.label(m, structure=s)
    bg, _ = ndi.label(~m, structure=s)
    return np.where(m, fg - 1, bg - 1 + nf)


def wcov(gt, pred):
    lg, lp = regions(gt).ravel(), regions(pred).ravel()
    ng, np_ = lg.max() + 1, lp.max() + 1
    sg = np.bincount(lg, minlength=ng)
    sp = np.bincount(lp, minlength=np_)
    pair, cnt = np.unique(lg.astype(np.int64) * np_ + lp, return_counts=True)
    g, p = pair // np_, pair % np_
    overlap = cnt / (sg[g] + sp[p] - cnt)
    best = np.zeros(ng)
    np.maximum.at(best, g, overlap)
    return float((sg * best).sum() / lg.size)


def bmap(seg):
    """seg2bmap at the mask's own size."""
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def boundary(gt, pred, r):
    bp, bg = bmap(pred), bmap(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        prec, rec = 1.0, 1.0
    elif n_p == 0:
        prec, rec = 1.0, 0.0
    elif n_g == 0:
        prec, rec = 0.0, 1.0
    else:
        prec = float((bp & ndi.binary_dilation(bg, structure=disk(r).astype(bool))).sum()) / n_p
        rec = float((bg & ndi.binary_dilation(bp, structure=disk(r).astype(bool))).sum()) / n_g
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return f, prec, rec


def main():
    cases = []
    for rel in MASKS:
        gt = np.array(Image.open(DATA / rel)) > 0
        assert gt.ndim == 2, rel
        for name in PERTURBATIONS:
            pred = perturb(gt, name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                iou = float(jaccard_score(gt.ravel(), pred.ravel()))
                f1 = float(f1_score(gt.ravel(), pred.ravel()))
            b = [boundary(gt, pred, r) for r in TOLERANCES]
            cases.append({
                "mask": rel,
                "perturbation": name,
                "gt_pixels": int(gt.sum()),
                "pred_pixels": int(pred.sum()),
                "iou": iou,
                "f1": f1,
                "wcov": wcov(gt, pred),
                "boundary_f": [x[0] for x in b],
                "boundary_precision": [x[1] for x in b],
                "boundary_recall": [x[2] for x in b],
            })
    # Both masks empty: sklearn's zero_division default.
    z = np.zeros(12, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both_empty = {
            "iou": float(jaccard_score(z, z)),
            "f1": float(f1_score(z, z)),
        }
    out = {
        "generator": "scripts/metrics2d_reference.py",
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            "scikit-image": skimage.__version__,
        },
        "tolerances_px": TOLERANCES,
        "both_empty": both_empty,
        "cases": cases,
    }
    path = ROOT / "tests" / "data" / "metrics2d_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
