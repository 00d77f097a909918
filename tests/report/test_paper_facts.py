"""The paper's numbers the reports print come from the project's own docs/paper.md (issue 15: they
cited shared/PAPER.md, a file users do not have)."""
from pathlib import Path

from transfusion.report import tables

PAPER = (Path(__file__).parent.parent.parent / "docs" / "paper.md").read_text()


def _in_paper(value: float) -> bool:
    return any(text in PAPER for text in {f"{value}", f"{value:g}", f"{value:.2f}"})


def test_reports_cite_the_projects_own_copy():
    assert "docs/paper.md" in tables.PAPER_SOURCE and "shared/" not in tables.PAPER_SOURCE


def test_every_paper_number_in_the_code_is_in_docs_paper_md():
    numbers = []
    for mean, std in tables.PAPER_RETINA_AUC.values():
        numbers += [mean, std]
    numbers += list(tables.PAPER_SMALL_DATA_AUC.values())
    for pair in tables.PAPER_CHEXPERT_RESNET50.values():
        numbers += list(pair)
    for model in ("resnet50", "inception_v3"):
        numbers += list(tables.PAPER_FIG2_CCA[model])
    missing = [v for v in numbers if not _in_paper(v)]
    assert not missing, f"numbers used by the reports but absent from docs/paper.md: {missing}"
    assert f"{tables.PAPER_THRESHOLD * 100:.0f}%" in PAPER


def test_a_one_seed_finding_says_to_run_more_seeds():
    # the demo's one-seed claims read "not decidable by more seeds", which is wrong
    from transfusion.report.findings import paired_finding

    row = paired_finding("gabor", "c", "k", "equivalent", [0.8], [0.77])
    assert row["verdict"] == "inconclusive" and "at least 3 seeds" in row["note"]
