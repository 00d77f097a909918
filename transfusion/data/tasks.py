"""What a model predicts for each medical task, and how its outputs are read."""
from __future__ import annotations

from dataclasses import dataclass

CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
RETINA_GRADES = ("grade0", "grade1", "grade2", "grade3", "grade4")
REFERABLE_GRADE = 2  # referable diabetic retinopathy: grade >= 2 (moderate or worse)


@dataclass(frozen=True)
class Task:
    """A prediction task.

    ``retina``: 5 grade logits, cross-entropy on grade 0-4; referable-DR probability is the
    sum of the softmax over grades >= 2. ``chexpert``: 5 logits, one per competition
    pathology, BCE-with-logits masked where the label is ignored.
    """

    name: str
    kind: str  # "grade" | "multilabel"
    num_outputs: int
    label_names: tuple[str, ...]
    image_size: int = 224  # the paper's input size for this task (any size works for small runs)


RETINA = Task("retina", "grade", 5, RETINA_GRADES, image_size=587)
CHEXPERT = Task("chexpert", "multilabel", 5, CHEXPERT_COMPETITION, image_size=224)
TASKS = {"retina": RETINA, "chexpert": CHEXPERT}


def referable(grades):
    """Referable diabetic retinopathy (grade >= 2) for a grade or an array/tensor of grades."""
    return grades >= REFERABLE_GRADE
