"""Fast ops with float64 pure-torch references beside them (``transfusion.ops.reference``)."""
from transfusion.ops.bn_relu import scale_shift_relu
from transfusion.ops.cbr import CBR2d, conv_bn_relu

__all__ = ["CBR2d", "conv_bn_relu", "scale_shift_relu"]
# ---- cbr stream ----
from transfusion.ops.bn_relu_train import bn_relu_train  # noqa: E402
from transfusion.ops.cbr import fold_bn  # noqa: E402

__all__ += ["bn_relu_train", "fold_bn"]
# ---- end cbr stream ----
