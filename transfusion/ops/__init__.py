"""Fast ops with float64 pure-torch references beside them (``transfusion.ops.reference`` and
``transfusion.ops.reference_cca``).

- (SV)CCA, PWCCA, linear CKA (biased or debiased), Procrustes: ``svcca``, ``cca``, ``pwcca``,
  ``cka``, ``procrustes`` (in-memory, batched) and
  ``CCAStatistics`` (streaming sufficient statistics over many layers); ``conv_to_datapoints``;
  ``similarity_matrix`` (every layer of one model against every layer of another, one pass).
- Conv-BN-ReLU: ``CBR2d`` (module), ``conv_bn_relu``, ``bn_relu_train``, ``fold_bn``,
  ``scale_shift_relu``; ``MaxPool2dSavingIndices``, the CBR models' pool (saves no input).
"""
from transfusion.ops.bn_relu import scale_shift_relu
from transfusion.ops.bn_relu_train import bn_relu_train
from transfusion.ops.cbr import CBR2d, conv_bn_relu, fold_bn
from transfusion.ops.cca_statistics import CCAStatistics
from transfusion.ops.datapoints import conv_to_datapoints
from transfusion.ops.maxpool import MaxPool2dSavingIndices
from transfusion.ops.similarity import SimilarityResult, cca, cka, procrustes, pwcca, svcca
from transfusion.ops.similarity_matrix import SimilarityMatrix, similarity_matrix, similarity_matrix_from

__all__ = [
    "CBR2d", "CCAStatistics", "MaxPool2dSavingIndices", "SimilarityResult", "bn_relu_train", "cca", "cka",
    "conv_bn_relu",
    "conv_to_datapoints", "fold_bn", "procrustes", "pwcca", "scale_shift_relu", "svcca",
    "SimilarityMatrix", "similarity_matrix", "similarity_matrix_from",
]
