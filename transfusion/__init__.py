"""transfusion: reproduce and extend Raghu et al., "Transfusion: Understanding Transfer Learning
for Medical Imaging" (NeurIPS 2019).

Public surface: ``transfusion.ops`` (fast (SV)CCA, PWCCA, CKA, fused CBR ops), ``transfusion.models``,
``transfusion.initializers``, ``transfusion.data``, ``transfusion.train`` and the ``transfusion`` CLI.
"""
from transfusion.errors import TransfusionError

__version__ = "0.1.0"

__all__ = ["TransfusionError", "__version__"]
