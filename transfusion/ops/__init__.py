"""Fast ops with float64 pure-torch references beside them (``transfusion.ops.reference``)."""
from transfusion.ops.bn_relu import scale_shift_relu
from transfusion.ops.cbr import CBR2d, conv_bn_relu

__all__ = ["CBR2d", "conv_bn_relu", "scale_shift_relu"]
