"""The study's models: ResNet50 (+ slim and narrow variants), Inception-v3 and the CBR family.

Every model exposes its stages by the paper's names (see ``transfusion.models.base``).
"""
from transfusion.models.base import StagedModel
from transfusion.models.cbr import CBR_SPECS, CBRNet, CBRSpec
from transfusion.models.inception import MIN_INPUT_SIZE as INCEPTION_MIN_INPUT_SIZE
from transfusion.models.inception import Inception3
from transfusion.models.registry import MODEL_NAMES, build_model, canonical_model_name, model_skeleton
from transfusion.models.resnet import SLIM_SOURCE, ResNet

__all__ = ["CBR_SPECS", "CBRNet", "CBRSpec", "INCEPTION_MIN_INPUT_SIZE", "Inception3",
           "MODEL_NAMES", "ResNet", "SLIM_SOURCE", "StagedModel", "build_model", "canonical_model_name",
           "model_skeleton"]
