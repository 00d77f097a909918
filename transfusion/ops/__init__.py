"""Fast ops with float64 pure-torch references beside them (``transfusion.ops.reference``)."""
from transfusion.ops.bn_relu import scale_shift_relu
from transfusion.ops.cbr import CBR2d, conv_bn_relu

__all__ = ["CBR2d", "conv_bn_relu", "scale_shift_relu"]

# ---- svcca stream: (SV)CCA, PWCCA, linear CKA, streaming statistics -------------------------------
from transfusion.ops.cca_statistics import CCAStatistics  # noqa: E402
from transfusion.ops.datapoints import conv_to_datapoints  # noqa: E402
from transfusion.ops.similarity import SimilarityResult, cca, cka, pwcca, svcca  # noqa: E402

__all__ += ["CCAStatistics", "SimilarityResult", "cca", "cka", "conv_to_datapoints", "pwcca", "svcca"]
# ---- end svcca stream -------------------------------------------------------------------------------
