"""CheXpert-v1.0 and CheXpert-v1.0-small: ``train.csv`` / ``valid.csv`` with the 19 published columns.

Root: the ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) folder itself, or the folder that
contains it. ``Path`` values keep their ``CheXpert-v1.0-small/`` prefix; images are looked up
relative to the folder holding ``train.csv``.

Labels: 1.0 positive, 0.0 negative, -1.0 uncertain, blank = not mentioned in the report.
Policy (``label_policy``) for the 5 competition pathologies:

=============  ==============================  =================================
policy         uncertain (-1.0)                blank (not mentioned)
=============  ==============================  =================================
``ignore``     masked out (mask 0)             negative: target 0, mask 1
``zeros``      negative (target 0, mask 1)     negative: target 0, mask 1
``ones``       positive (target 1, mask 1)     negative: target 0, mask 1
dict           per label, e.g. ``{"Atelectasis": "ones", "Edema": "ones",
               "default": "zeros", "blank": "zeros"}`` ("default" for labels not listed;
               "blank": "zeros" (the default) or "ignore" to mask blanks too)
=============  ==============================  =================================

Blank as negative follows the CheXpert convention (Irvin et al. 2019 train their baselines so;
a radiology report mentions what it finds). The policy name, including the blank rule, goes
into ``describe()`` and so into every result file. ``valid.csv`` must hold only 0/1.

Splits: train/val = 90/10 of ``train.csv`` by patient hash; test = ``valid.csv`` (the expert-read
set; the official test set is not public). Without ``valid.csv``: 80/10/10 of ``train.csv``.
Frontal-only (the default) keeps ``Frontal/Lateral == Frontal``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfusion.data import splits as S
from transfusion.data.base import ItemTable
from transfusion.data.catalogue import Loaded, LoadRequest
from transfusion.data.csvfile import check_inside_root, read_table
from transfusion.data.tasks import CHEXPERT_COMPETITION
from transfusion.errors import ConfigError, DataError

CHEXPERT_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_OBSERVATIONS = CHEXPERT_COLUMNS[5:]
_PATIENT = re.compile(r"patient(\d+)")
_PATIENT_LINE = re.compile(r"^[^\n]*?patient(\d+)[^\n]*$", re.MULTILINE)
_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}
ACTIONS = ("ignore", "zeros", "ones")


@dataclass(frozen=True)
class LabelPolicy:
    uncertain: tuple[str, ...]  # one action per competition label
    blank: str = "zeros"

    @property
    def name(self) -> str:
        if len(set(self.uncertain)) == 1:
            base = self.uncertain[0]
        else:
            base = ",".join(f"{n}={a}" for n, a in zip(CHEXPERT_COMPETITION, self.uncertain))
        return f"{base};blank={self.blank}"


def parse_label_policy(policy: str | dict | LabelPolicy) -> LabelPolicy:
    """'ignore' | 'zeros' | 'ones' | {label: action, 'default': action, 'blank': 'zeros'|'ignore'}."""
    if isinstance(policy, LabelPolicy):
        return policy
    if isinstance(policy, str):
        p = policy.lower().removeprefix("u-")
        if p not in ACTIONS:
            raise ConfigError(f"unknown CheXpert label policy {policy!r}: use one of {', '.join(ACTIONS)} "
                              "or a dict {label: action, 'default': action, 'blank': 'zeros'|'ignore'}")
        return LabelPolicy((p,) * len(CHEXPERT_COMPETITION))
    if isinstance(policy, dict):
        d = dict(policy)
        default = d.pop("default", "ignore")
        blank = d.pop("blank", "zeros")
        unknown = [k for k in d if k not in CHEXPERT_COMPETITION]
        if unknown:
            raise ConfigError(f"label policy names unknown labels {unknown}: use "
                              f"{', '.join(CHEXPERT_COMPETITION)}, 'default' or 'blank'")
        acts = tuple(d.get(n, default) for n in CHEXPERT_COMPETITION)
        bad = [a for a in acts if a not in ACTIONS]
        if bad or blank not in ("zeros", "ignore"):
            raise ConfigError(f"label policy actions must be {', '.join(ACTIONS)} (blank: zeros or "
                              f"ignore); got {bad or blank!r}")
        return LabelPolicy(acts, blank)
    raise ConfigError(f"label policy must be a string or a dict, got {type(policy).__name__}")


def apply_policy(raw: np.ndarray, policy: str | dict | LabelPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Raw labels (N, 5) in {1, 0, -1, NaN} -> (targets float32 in {0,1}, masks float32)."""
    pol = parse_label_policy(policy)
    raw = np.asarray(raw, dtype=np.float32)
    targets = (raw == 1.0).astype(np.float32)
    masks = np.ones_like(targets)
    unc, blank = raw == -1.0, np.isnan(raw)
    for k, act in enumerate(pol.uncertain):
        if act == "ignore":
            masks[unc[:, k], k] = 0.0
        elif act == "ones":
            targets[unc[:, k], k] = 1.0
    if pol.blank == "ignore":
        masks[blank] = 0.0
    return targets, masks


@dataclass
class ChexpertTable:
    """A parsed CheXpert label file: one entry per row, labels of the 5 competition pathologies."""

    paths: list[str]  # as written in the file (with the CheXpert-v1.0-small/ prefix)
    patient_ids: list[str]
    frontal: np.ndarray  # bool
    raw: np.ndarray  # float32 (N, 5): 1, 0, -1, NaN (blank)
    lines: np.ndarray  # int: line number in the file
    file: Path

    def __len__(self) -> int:
        return len(self.paths)


def _label_column(values: tuple[str, ...], name: str, path: Path, lines: np.ndarray) -> np.ndarray:
    """Strings of one label column -> float32 (1, 0, -1, NaN), vectorised over unique values."""
    uniq, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    mapped = np.empty(len(uniq), np.float32)
    for k, u in enumerate(uniq):
        v = _VALUES.get(u.strip())
        if v is None:
            i = int(np.flatnonzero(inverse == k)[0])
            raise DataError(f"{path}, line {lines[i]}: column {name!r} has {str(u)!r}; "
                            "CheXpert labels are 1.0, 0.0, -1.0 or blank")
        mapped[k] = v
    return mapped[inverse]


def read_chexpert_csv(path: str | Path, *, binary_only: bool = False) -> ChexpertTable:
    """Parse ``train.csv`` / ``valid.csv`` (plain or .gz). ``binary_only``: only 0/1 allowed (valid.csv).

    Column-wise (the csv module reads the rows, numpy maps the values), so the full 223,414-row
    train.csv parses in about a second.
    """
    path = Path(path)
    header, body, line_list = read_table(path, ("Path", "Frontal/Lateral", *CHEXPERT_COMPETITION),
                                         "CheXpert (train.csv/valid.csv with the 19 published columns)")
    if not body:
        raise DataError(f"{path}: no rows under the header")
    lines = np.asarray(line_list, dtype=np.int64)
    columns = list(zip(*body))
    paths = list(columns[header.index("Path")])
    fl = np.asarray(columns[header.index("Frontal/Lateral")], dtype=object)
    raw_a = np.stack([_label_column(columns[header.index(c)], c, path, lines) for c in CHEXPERT_COMPETITION], 1)
    bad = ~np.isin(fl, ["Frontal", "Lateral"])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}, line {lines[i]}: Frontal/Lateral must be 'Frontal' or 'Lateral', got {fl[i]!r}")
    if binary_only:
        nb = ~np.isin(raw_a, [0.0, 1.0])
        if nb.any():
            i, k = map(int, np.argwhere(nb)[0])
            v = raw_a[i, k]
            raise DataError(f"{path}, line {lines[i]}: {CHEXPERT_COMPETITION[k]} is "
                            f"{'blank' if np.isnan(v) else v}; valid.csv holds only 0/1 labels "
                            "(use train.csv for uncertain labels)")
    check_inside_root(paths, path, lines, "Path")
    pids = _PATIENT_LINE.findall("\n".join(paths))  # one C-level pass when every path has one
    if len(pids) != len(paths):
        pids = [m.group(1) if m else None for m in map(_PATIENT.search, paths)]
    if None in pids:
        i = pids.index(None)
        raise DataError(f"{path}, line {lines[i]}: Path {paths[i]!r} has no 'patient<digits>' part; "
                        "patient-level splits need it")
    return ChexpertTable(paths, pids, fl == "Frontal", raw_a, lines, path)


def find_base(root: Path) -> Path:
    """The folder that holds train.csv: ``root`` or its CheXpert-v1.0(-small) subfolder."""
    root = Path(root)
    for cand in (root, root / "CheXpert-v1.0-small", root / "CheXpert-v1.0"):
        if (cand / "train.csv").is_file() or (cand / "train.csv.gz").is_file():
            return cand
    raise DataError(f"no CheXpert train.csv in {root} or {root}/CheXpert-v1.0-small: pass the "
                    "CheXpert-v1.0-small folder (or its parent) as root")


def image_path(base: Path | str, p: str) -> str:
    """Where the image of a ``Path`` value lies: its ``CheXpert-v1.0-small/`` prefix is ``base``."""
    head, sep, rest = p.partition("/")
    if sep and head.startswith("CheXpert-v1.0"):
        p = rest
    return f"{base}/{p}"  # plain string join: 200k rows, and "/" works on every OS


def _to_items(t: ChexpertTable, base: Path, keep: np.ndarray, policy) -> ItemTable:
    idx = np.flatnonzero(keep)
    targets, masks = apply_policy(t.raw[idx], policy)
    b = str(base)
    return ItemTable(image_ids=[t.paths[i] for i in idx], patient_ids=[t.patient_ids[i] for i in idx],
                     targets=targets, masks=masks, paths=[image_path(b, t.paths[i]) for i in idx],
                     sources=[f"{t.file.name}, line {t.lines[i]}" for i in idx])


def load_chexpert(req: LoadRequest) -> Loaded:
    """The catalogue's loader of CheXpert-v1.0-small folders."""
    table, extra = _chexpert(Path(req.root), req.split, req.seed, req.split_file, req.label_policy,
                             req.frontal_only)
    return Loaded(table, extra=extra, label_policy=parse_label_policy(req.label_policy).name)


def _chexpert(root: Path, split: str, seed: int, split_file: str | None, label_policy,
              frontal_only: bool) -> tuple[ItemTable, dict]:
    base = find_base(root)
    train_csv = base / "train.csv" if (base / "train.csv").is_file() else base / "train.csv.gz"
    valid_csv = base / "valid.csv"
    pol = parse_label_policy(label_policy)
    extra = {"label_policy_detail": {"uncertain": dict(zip(CHEXPERT_COMPETITION, pol.uncertain)),
                                     "blank": pol.blank}, "frontal_only": frontal_only}
    view = lambda t: t.frontal if frontal_only else np.ones(len(t), bool)  # noqa: E731
    if split_file:
        mapping = S.read_split_file(split_file)
        out = []
        for csv_path, binary in ((train_csv, False), (valid_csv, True)):
            if not csv_path.is_file():
                continue
            t = read_chexpert_csv(csv_path, binary_only=binary)
            assigned = S.splits_from_file(mapping, t.patient_ids, t.paths, str(split_file))
            out.append(_to_items(t, base, view(t) & (assigned == split), pol))
        items = out[0] if len(out) == 1 else _concat(out)
        return items, {**extra, "split_source": f"split file {split_file}"}
    if split == "test" and valid_csv.is_file():
        t = read_chexpert_csv(valid_csv, binary_only=True)
        return _to_items(t, base, view(t), pol), {**extra, "split_source": "valid.csv"}
    t = read_chexpert_csv(train_csv)
    fr = S.TRAIN_VAL_FRACTIONS if valid_csv.is_file() else S.DEFAULT_FRACTIONS
    assigned = S.assign_splits(t.patient_ids, seed, fr)
    return (_to_items(t, base, view(t) & (assigned == split), pol),
            {**extra, "split_source": f"patient hash seed {seed}, {'/'.join(str(int(v*100)) for v in fr.values())}"})


def _concat(tables: list[ItemTable]) -> ItemTable:
    return ItemTable(
        image_ids=sum((t.image_ids for t in tables), []), patient_ids=sum((t.patient_ids for t in tables), []),
        targets=np.concatenate([t.targets for t in tables]), masks=np.concatenate([t.masks for t in tables]),
        paths=sum((t.paths for t in tables), []), sources=sum((t.sources for t in tables), []))
