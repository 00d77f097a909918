from typer.testing import CliRunner

from transfusion.cli import app


def test_make_and_describe(tmp_path):
    runner = CliRunner()
    out = tmp_path / "fundus"
    r = runner.invoke(app, ["data", "make", "fundus", "--out", str(out), "--n", "40", "--size", "32",
                            "--seed", "3", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert (out / "trainLabels.csv").is_file()
    r = runner.invoke(app, ["data", "describe", "eyepacs", str(out)])
    assert r.exit_code == 0, r.output
    assert "eyepacs train:" in r.output and "eyepacs test:" in r.output and "referable" in r.output
    r = runner.invoke(app, ["data", "describe", "chexpert", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "CheXpert-v1.0-small" in r.output  # as every CLI error (errors.USER_ERROR_EXIT)


def test_make_chexpert_then_describe_policy(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cx"
    r = runner.invoke(app, ["data", "make", "chexpert", "--out", str(out), "--n", "60", "--size", "32",
                            "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "describe", "chexpert", str(out), "--split", "train", "--policy", "ones"])
    assert r.exit_code == 0, r.output
    assert "label policy ones;blank=zeros" in r.output and "Pleural Effusion" in r.output
