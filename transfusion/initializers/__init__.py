"""Initialisations (random, transfer, mean_var, transfuse, slim, gabor) and checkpoint files."""
from transfusion.initializers.checkpoint import (
                                                 Checkpoint,
                                                 describe_state_dict,
                                                 identify_architecture,
                                                 load_model_checkpoint,
                                                 load_state_dict_file,
                                                 read_checkpoint,
                                                 save_model_checkpoint,
)
from transfusion.initializers.gabor import gabor_bank, gabor_kernel
from transfusion.initializers.methods import INIT_METHODS, initialize

__all__ = ["Checkpoint", "INIT_METHODS", "describe_state_dict", "gabor_bank", "gabor_kernel",
           "identify_architecture", "initialize", "load_model_checkpoint", "load_state_dict_file",
           "read_checkpoint", "save_model_checkpoint"]
