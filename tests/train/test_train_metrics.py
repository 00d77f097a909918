import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from transfusion.train import metrics as M


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes many ties
    assert M.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.roc_auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_known_values():
    assert M.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert M.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert M.roc_auc([0, 1], [0, 1]) == 1.0


def test_single_class_is_nan_with_warning():
    with pytest.warns(M.MetricWarning, match="only positive"):
        v = M.roc_auc([0.2, 0.3], [1, 1])
    assert math.isnan(v)
    logits = torch.randn(6, 5)
    with pytest.warns(M.MetricWarning):
        r = M.retina_metrics(logits, torch.tensor([0, 1, 0, 1, 0, 1]))  # no referable case
    assert math.isnan(r["auc_referable"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        M.roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([float("nan"), 0.2], [0, 1])


@pytest.mark.parametrize("seed", range(3))
def test_quadratic_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 300)
    p = np.clip(t + rng.integers(-1, 2, 300), 0, 4)
    p[:20] = 0
    ref = cohen_kappa_score(t, p, weights="quadratic", labels=list(range(5)))
    assert M.quadratic_kappa(t, p, 5) == pytest.approx(ref, abs=1e-12)


def test_retina_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 120)
    logits = rng.normal(size=(120, 5)) + np.eye(5)[g] * 1.5
    r = M.retina_metrics(torch.tensor(logits), torch.tensor(g))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert r["auc_referable"] == pytest.approx(roc_auc_score(g >= 2, prob[:, 2:].sum(1)), abs=1e-12)
    assert r["auc_macro_ovr"] == pytest.approx(
        roc_auc_score(g, prob, multi_class="ovr", average="macro"), abs=1e-12)
    assert r["kappa"] == pytest.approx(
        cohen_kappa_score(g, prob.argmax(1), weights="quadratic", labels=list(range(5))), abs=1e-12)


def test_chexpert_metrics_leave_masked_labels_out():
    rng = np.random.default_rng(1)
    names = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    n = 80
    t = rng.integers(0, 2, (n, 5)).astype(float)
    m = (rng.random((n, 5)) < 0.7).astype(float)
    lg = rng.normal(size=(n, 5)) + t
    # masked entries get adversarial scores: they must not influence the result
    lg[m == 0] = np.where(t[m == 0] == 1, -100.0, 100.0)
    r = M.chexpert_metrics(lg, t, m, names)
    per = []
    for j, name in enumerate(names):
        keep = m[:, j] > 0
        ref = roc_auc_score(t[keep, j], lg[keep, j])
        assert r["auc_" + name.lower().replace(" ", "_")] == pytest.approx(ref, abs=1e-12)
        per.append(ref)
    assert r["auc_mean"] == pytest.approx(np.mean(per))
    assert r["auc_labels"] == 5


def test_chexpert_single_class_label_is_nan_and_mean_uses_the_rest():
    t = np.zeros((10, 2))
    t[:5, 1] = 1
    lg = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.warns(M.MetricWarning):
        r = M.chexpert_metrics(lg, t, np.ones((10, 2)), ("A", "B"))
    assert math.isnan(r["auc_a"]) and not math.isnan(r["auc_b"])
    assert r["auc_mean"] == pytest.approx(r["auc_b"]) and r["auc_labels"] == 1


def test_steps_to_threshold_interpolates(tmp_path):
    rows = [{"step": 0, "kind": "eval", "auc": 0.5}, {"step": 10, "kind": "train", "loss": 1.0},
            {"step": 100, "kind": "eval", "auc": 0.8}, {"step": 200, "kind": "eval", "auc": 0.95},
            {"step": 300, "kind": "eval", "auc": 0.99}]
    assert M.steps_to_threshold(rows, "auc", 0.91) == pytest.approx(100 + (0.11 / 0.15) * 100)
    assert M.steps_to_threshold(rows, "auc", 0.5) == 0
    assert M.steps_to_threshold(rows, "auc", 0.999) is None
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4')  # cut last line
    assert M.steps_to_threshold(p, "auc", 0.95) == 200
    assert M.steps_to_threshold(str(p), "auc", 0.95) == 200


def test_average_precision_equals_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    from transfusion.train.metrics import average_precision

    rng = np.random.default_rng(0)
    for n, levels in ((50, 5), (400, 1000), (1000, 3)):
        s = rng.integers(0, levels, n).astype(float)  # many ties when levels is small
        y = (rng.random(n) < 0.2).astype(int)
        assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    with pytest.warns(Warning, match="no positive"):
        assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_expected_calibration_error_known_values():
    from transfusion.train.metrics import expected_calibration_error

    # all predictions 0.8 in one bin, 3 of 4 positive: |0.75 - 0.8| = 0.05
    assert expected_calibration_error([0.8] * 4, [1, 1, 1, 0]) == pytest.approx(0.05)
    # two bins, each perfectly calibrated
    assert expected_calibration_error([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]) == pytest.approx(0.0)
    # calibrated by construction on many samples: small; always-wrong confident: large
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    assert expected_calibration_error(p, rng.random(p.size) < p) < 0.01
    assert expected_calibration_error([1.0, 1.0, 0.0], [0, 0, 1]) == pytest.approx(1.0)


def test_task_metrics_report_auprc_and_ece():
    from transfusion.train.metrics import chexpert_metrics, retina_metrics

    rng = np.random.default_rng(2)
    grades = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 2 * np.eye(5)[grades]
    r = retina_metrics(logits, grades)
    assert 0 < r["auprc_referable"] <= 1 and 0 <= r["ece_referable"] <= 1
    labels = ["Atelectasis", "Pleural Effusion"]
    t = (rng.random((200, 2)) < 0.3).astype(float)
    c = chexpert_metrics(rng.normal(size=(200, 2)) + 2 * t, t, np.ones_like(t), labels)
    for key in ("auprc_atelectasis", "ece_pleural_effusion", "auprc_mean", "ece_mean"):
        assert np.isfinite(c[key]), key
