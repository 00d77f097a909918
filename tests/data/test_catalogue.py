"""Issue 13: one catalogue of tasks and dataset formats. A format registered there (loader, task,
fit) is loadable through load_dataset, accepted by RunSpec and by the experiments' config, and
read by a training run's data, without editing any other module."""
import numpy as np
import pytest

from transfusion.data import catalogue, load_dataset
from transfusion.data.tasks import RETINA
from transfusion.errors import ConfigError

TINY = "tiny_grades"


def tiny_loader(req: catalogue.LoadRequest) -> catalogue.Loaded:
    """A fake format: 10 in-memory 12 px images per split, grades 0-4 twice over."""
    from transfusion.data.base import ItemTable

    rng = np.random.default_rng(req.seed)
    ids = [f"{req.split}_{i}" for i in range(10)]
    table = ItemTable(image_ids=ids, patient_ids=ids, targets=np.arange(10, dtype=np.int64) % 5,
                      masks=np.ones(10, np.float32),
                      arrays=rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8), sources=ids)
    return catalogue.Loaded(table, extra={"split_source": f"tiny {req.split}"})


@pytest.fixture
def tiny_format():
    fmt = catalogue.register(catalogue.DatasetFormat(TINY, tiny_loader, task="retina",
                                                     aliases=("tinygrades2",), fit="pad"))
    try:
        yield fmt
    finally:
        catalogue.FORMATS.pop(TINY)


def test_a_registered_format_loads_through_load_dataset(tiny_format, tmp_path):
    import transfusion.data as D
    from transfusion.data import transforms as T

    ds = load_dataset("Tiny-Grades", tmp_path, "train", image_size=8, augment=True, seed=1)
    assert ds.dataset == TINY and ds.task is RETINA and len(ds) == 10 and ds.fit == "pad"
    assert ds.transform.augment == T.RETINA_AUGMENT  # the task's augmentation
    image, target, _ = ds[3]
    assert tuple(image.shape) == (3, 8, 8) and int(target) == 3
    assert ds.describe()["split_source"] == "tiny train"
    assert len(load_dataset("tinygrades2", tmp_path, "val", image_size=8, augment=False)) == 10
    assert TINY in D.DATASET_NAMES


def test_a_registered_format_is_accepted_by_runspec_and_config(tiny_format, tmp_path):
    from transfusion.experiments.config import make_config
    from transfusion.train.data_stream import load_run_data
    from transfusion.train.recipes import get_recipe
    from transfusion.train.spec import RunSpec

    spec = RunSpec(model="cbr_tiny", dataset=TINY, data_root=str(tmp_path))
    assert spec.task == "retina" and spec.recipe == "retina"
    data = load_run_data(spec, get_recipe("retina", {"image_size": 8}), load_dataset)
    assert len(data.train) == 10 and data.train.dataset == TINY

    cfg = make_config("performance", preset="micro", dataset="retina", data_dir=str(tmp_path),
                      data_format=TINY, runs=str(tmp_path / "runs"), out=str(tmp_path / "res"))
    assert cfg.data_format == TINY
    with pytest.raises(ConfigError, match="does not fit --dataset chexpert; choose one of chexpert, medmnist"):
        make_config("performance", preset="micro", dataset="chexpert", data_dir=str(tmp_path),
                    data_format=TINY)


def test_register_checks_the_task():
    with pytest.raises(ConfigError, match="unknown task 'mri'"):
        catalogue.register(catalogue.DatasetFormat("mri_folder", tiny_loader, task="mri"))
    assert "mri_folder" not in catalogue.FORMATS


def test_the_catalogue_gives_what_the_old_tables_did():
    """The tables that lived in five modules (issue 13), now views of the catalogue."""
    from transfusion.train.metrics import HEADLINE

    assert catalogue.format_names() == ("eyepacs", "aptos", "medmnist", "chexpert", "imagefolder")
    assert {n: catalogue.task_of_format(n) for n in catalogue.FORMATS} == {
        "eyepacs": "retina", "aptos": "retina", "medmnist": None, "chexpert": "chexpert",
        "imagefolder": "natural"}
    assert tuple(catalogue.TASKS) == ("retina", "chexpert", "natural")
    assert catalogue.medical_tasks() == ("retina", "chexpert")
    assert catalogue.formats_for("retina") == ("eyepacs", "aptos", "medmnist")
    assert catalogue.formats_for("chexpert") == ("chexpert", "medmnist")
    assert {t: catalogue.synthetic_kind(t) for t in catalogue.TASKS} == {
        "retina": "fundus", "chexpert": "chexpert", "natural": "natural"}
    assert {t: catalogue.synthetic_format(t) for t in catalogue.TASKS} == {
        "retina": "eyepacs", "chexpert": "chexpert", "natural": "imagefolder"}
    assert {t: catalogue.default_recipe(t) for t in catalogue.TASKS} == {
        "retina": "retina", "chexpert": "chexpert", "natural": "pretrain"}
    assert {t: catalogue.headline(t) for t in catalogue.TASKS} == {
        "retina": "auc_referable", "chexpert": "auc_mean", "natural": "accuracy"}
    assert HEADLINE == {"grade": "auc_referable", "multilabel": "auc_mean", "multiclass": "accuracy"}
    for alias in ("CheXpert-v10-small", "chexpert_small", "RetinaMNIST", "chestmnist"):
        assert catalogue.find_format(alias).name in ("chexpert", "medmnist")
