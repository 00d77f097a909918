"""The six initialisations of the study. ``initialize(model, method, ...)`` changes the model in
place and returns a JSON-serialisable summary of what it did (which tensor came from where).

- random: the architecture's standard init, drawn from ``seed``.
- transfer: every tensor but the new head from a checkpoint.
- mean_var: every non-BN weight tensor drawn i.i.d. from N(mean, var) of the pretrained tensor;
  BatchNorm reset to the architecture's own initial values (identity: weight 1, bias 0, running
  mean 0, var 1; a zero_init_residual model's last BN per bottleneck: weight 0); head random.
- transfuse (``upto`` = a stage name): the pretrained stages up to and including ``upto`` (with
  their BN), everything above random.
- slim: ResNet50's pretrained conv1..block2 into ``resnet50_slim``, block3-block4 random.
- gabor: the first conv from a Gabor bank (``transfusion.initializers.gabor``) scaled to the
  pretrained first conv's Frobenius norm (or, without a checkpoint, to the expected norm of a He
  init), everything else random.

Per-tensor sources in the summary: "checkpoint", "random", "mean_var", "gabor", "reset".
The random part is always the standard init drawn from ``seed`` first, so two seeds give two
different random parts and one seed always gives the same.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter

import torch
from torch import nn

from transfusion.errors import CheckpointError, ConfigError
from transfusion.initializers.checkpoint import (
    DISPLAY_NAMES,
    Checkpoint,
    describe_state_dict,
    identify_architecture,
    read_checkpoint,
)
from transfusion.initializers.gabor import GAMMA, SIGMA_PER_WAVELENGTH, gabor_bank
from transfusion.models import SLIM_SOURCE, canonical_model_name, model_skeleton

log = logging.getLogger(__name__)

INIT_METHODS: tuple[str, ...] = ("random", "transfer", "mean_var", "transfuse", "slim", "gabor")
_NEEDS_CHECKPOINT = {"transfer", "mean_var", "transfuse", "slim"}
_MAX_LISTED = 6


def _canonical_method(method: str) -> str:
    m = method.lower().replace("-", "_").replace(" ", "_")
    m = {"meanvar": "mean_var", "imagenet": "transfer", "pretrained": "transfer"}.get(m, m)
    if m not in INIT_METHODS:
        raise ConfigError(f"unknown initialisation {method!r}; choose one of "
                          f"{', '.join(INIT_METHODS)}")
    return m


def _bn_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _random_init(model: nn.Module, seed: int) -> None:
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            model.init_weights()


def _adapt_first_conv(model: nn.Module, state_dict: dict, notes: list[str]) -> dict:
    """RGB -> grayscale: a 3-channel first conv going into a 1-channel model is summed over its
    input channels (the response to a gray image x equals the RGB filter's response to (x,x,x))."""
    key = model.first_conv_key
    if key not in state_dict:
        return state_dict
    want = model.state_dict()[key].shape[1]
    have = state_dict[key].shape[1] if state_dict[key].dim() == 4 else None
    if have == 3 and want == 1:
        state_dict = dict(state_dict)
        state_dict[key] = state_dict[key].sum(dim=1, keepdim=True)
        note = (f"{key}: the checkpoint's 3-channel (RGB) filters were summed over the colour "
                "channels for the 1-channel (grayscale) model")
        notes.append(note)
        log.info(note)
    elif have == 1 and want == 3:
        raise CheckpointError(f"the checkpoint's first conv ({key}) takes 1 input channel but "
                              "the model takes 3; build the model with in_channels=1")
    return state_dict


def _check_fits(ckpt: Checkpoint, state_dict: dict, reference: nn.Module,
                target_name: str) -> None:
    """Every key of ``reference`` (the architecture the checkpoint must have) except its heads
    must be in the file with the same shape, and the file must have nothing else (heads aside);
    BN counters and Inception's auxiliary classifier may be missing (they then stay random)."""
    ref = reference.state_dict()
    problems = []
    for k, v in ref.items():
        if reference.is_head_key(k):
            continue
        if k not in state_dict:
            optional = k.endswith("num_batches_tracked") or k.startswith("AuxLogits.")
            if not optional:
                problems.append(f"missing {k} (model {tuple(v.shape)})")
        elif tuple(state_dict[k].shape) != tuple(v.shape):
            problems.append(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}")
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in state_dict.items()
                 if k not in ref and not any(k == p or k.startswith(p + ".")
                                             for p in reference.head_prefixes)]
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(
            f"checkpoint {ckpt.path!r} does not fit {DISPLAY_NAMES.get(target_name, target_name)}"
            f": {len(problems)} mismatches: {shown}{more}. "
            f"{_sentence(_what_the_file_holds(ckpt, target_name))}")


def _what_the_file_holds(ckpt, target_name: str) -> str:
    """What a checkpoint that does not fit ``target_name`` is, judged by its tensors (its
    metadata may name the target and still not fit it), and what to do."""
    target = DISPLAY_NAMES.get(target_name, target_name)
    found = identify_architecture(ckpt.state_dict)
    claim = ""
    if ckpt.model_name and ckpt.model_name != found:
        claim = f" (its metadata says '{ckpt.model_name}')"
    if found == target_name:
        return (f"its other tensors fit {target}{claim}: the mismatches are what differ, e.g. the "
                f"input channels (set --in-channels to the file's) or a modified layer")
    if found is not None:
        return (f"its tensors are a {DISPLAY_NAMES.get(found, found)} checkpoint ('{found}'){claim}, "
                f"not {target}: pass a {target} checkpoint (or build --model {found})")
    return (f"{describe_state_dict(ckpt.state_dict, None)}{claim}: pass a {target} checkpoint")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _copy(model: nn.Module, state_dict: dict, keys: list[str], sources: dict) -> None:
    """Copy ``keys`` from the file; BN counters that older files lack (e.g. torchvision's
    resnet50-0676ba61.pth) are set to 0 ("reset")."""
    target = model.state_dict()
    with torch.no_grad():
        for k in keys:
            if k in state_dict:
                target[k].copy_(state_dict[k])
                sources[k] = "checkpoint"
            elif k.endswith("num_batches_tracked"):
                target[k].zero_()
                sources[k] = "reset"


def _pretrained_keys(model: nn.Module, stages) -> list[str]:
    return [k for s in stages for k in model.stage_keys(s)]


def _note_transform_input(model: nn.Module, notes: list[str]) -> None:
    if hasattr(model, "transform_input") and model.state_dict()[model.first_conv_key].shape[1] == 3:
        model.transform_input = True
        notes.append("Inception-v3: transform_input switched on (ImageNet-normalised inputs are "
                     "mapped to the [-1, 1] range the pretrained weights expect)")


def _gabor(model: nn.Module, state_dict: dict | None, sources: dict, notes: list[str]) -> dict:
    key = model.first_conv_key
    weight = model.state_dict()[key]
    out_c, in_c, kh, kw = weight.shape
    if kh != kw:
        raise ConfigError(f"Gabor init needs a square first conv, {key} is {kh}x{kw}")
    bank, params = gabor_bank(out_c, in_c, kh)
    if state_dict is not None:
        target = float(state_dict[key].float().norm())
        norm_source = "pretrained first conv"
    else:  # expected norm of a He (kaiming normal, fan_out, ReLU) init of this tensor
        target = math.sqrt(2.0 / (out_c * kh * kw)) * math.sqrt(weight.numel())
        norm_source = "He init (expected norm)"
    with torch.no_grad():
        weight.copy_(bank * (target / float(bank.norm())))
    sources[key] = "gabor"
    notes.append(f"{key}: {out_c} Gabor filters scaled to Frobenius norm {target:.4f} "
                 f"({norm_source})")
    return {"target_norm": target, "norm_source": norm_source, "filters": params,
            "sigma_per_wavelength": SIGMA_PER_WAVELENGTH, "gamma": GAMMA,
            "colour": "luminance: same filter on every input channel / sqrt(in_channels)"}


def _mean_var(model: nn.Module, state_dict: dict, keys: list[str], seed: int,
              sources: dict) -> None:
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    bn = _bn_prefixes(model)
    target = model.state_dict()
    with torch.no_grad():
        for k in keys:
            t = target[k]
            if k.startswith(bn) or k.endswith("num_batches_tracked"):
                # BatchNorm keeps the architecture's own initial values, set by _random_init just
                # before: weight 1 / bias 0 / running stats 0 and 1 (torchvision's ResNet50, the
                # CBRs), but 0 for each bottleneck's last BN in a zero_init_residual model
                # (resnet50_narrow): forcing it to 1 there made the narrow ResNet untrainable (demo,
                # 3 seeds: test AUC 0.53-0.62 after 300 steps, against 0.83-0.86 from random init)
                sources[k] = "reset"
            elif t.is_floating_point() and k in state_dict:
                src = state_dict[k].double()
                std = float(src.std()) if src.numel() > 1 else 0.0
                draw = torch.randn(t.shape, generator=gen, dtype=torch.float32)
                t.copy_(draw.mul_(std).add_(float(src.mean())))
                sources[k] = "mean_var"


def initialize(model: nn.Module, method: str, *, model_name: str,
               checkpoint: str | os.PathLike | None = None, upto: str | None = None,
               seed: int = 0) -> dict:
    """Initialise ``model`` (built by ``build_model(model_name, ...)``) in place; returns the
    summary (JSON-serialisable) that the run writes next to its results."""
    method = _canonical_method(method)
    name = canonical_model_name(model_name)
    built_as = getattr(model, "model_name", name)
    if built_as != name:
        raise ConfigError(f"model_name={model_name!r} but the model was built as {built_as!r}; "
                          "pass the name the model was built with")
    if method in _NEEDS_CHECKPOINT and checkpoint is None:
        raise ConfigError(f"initialisation {method!r} needs a checkpoint file (ImageNet weights "
                          f"for {DISPLAY_NAMES[name]}); pass checkpoint=<path>")
    if method == "transfuse":
        if upto is None or upto not in model.stage_names:
            raise ConfigError(f"transfuse needs upto= one of {', '.join(model.stage_names)} "
                              f"(got {upto!r})")
    elif upto is not None:
        raise ConfigError(f"upto= is only for method 'transfuse', not {method!r}")
    if method == "slim" and name not in SLIM_SOURCE:
        raise ConfigError(f"the slim initialisation builds a slim model ({', '.join(SLIM_SOURCE)}); "
                          f"got model {name!r}: build_model('resnet50_slim', ...)")

    _random_init(model, seed)
    keys = list(model.state_dict())
    sources = {k: "random" for k in keys}
    notes: list[str] = []
    summary: dict = {"method": method, "model_name": name, "seed": int(seed), "upto": upto,
                     "checkpoint": None}

    ckpt = state_dict = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        summary["checkpoint"] = ckpt.describe()
        if method == "random":
            notes.append("checkpoint ignored by the random initialisation")
        else:
            notes += ckpt.notes
            state_dict = _adapt_first_conv(model, ckpt.state_dict, notes)
            reference, ref_name = model, name
            if method == "slim":
                in_c = model.state_dict()[model.first_conv_key].shape[1]
                ref_name = SLIM_SOURCE[name]
                reference = model_skeleton(ref_name, 1000, in_c)
            if method in ("transfer", "mean_var"):
                loaded = [k for k in keys if not model.is_head_key(k)]
            elif method == "transfuse":
                stages = model.stage_names[:model.stage_names.index(upto) + 1]
                loaded = _pretrained_keys(model, stages)
            elif method == "slim":
                loaded = _pretrained_keys(model, ("conv1", "block1", "block2"))
            else:  # gabor: only the first conv's norm is used
                loaded = [model.first_conv_key]
            _check_fits(ckpt, state_dict, reference, ref_name)
            if method == "mean_var":
                _mean_var(model, state_dict, loaded, seed, sources)
            elif method != "gabor":
                _copy(model, state_dict, loaded, sources)
            if method != "gabor":
                missing = [k for k in loaded if sources[k] == "random"]
                if missing:
                    notes.append(f"{len(missing)} tensors not in the checkpoint stayed random "
                                 f"(e.g. {missing[0]})")
            if method in ("transfer", "transfuse"):
                _note_transform_input(model, notes)
    if method == "gabor":
        summary["gabor"] = _gabor(model, state_dict, sources, notes)

    # The head is never loaded: always fresh, for the new number of classes.
    summary["head"] = {"keys": [k for k in keys if model.is_head_key(k)], "source": "random"}
    summary["counts"] = dict(Counter(sources.values()))
    summary["stages"] = {s: dict(Counter(sources[k] for k in model.stage_keys(s)))
                         for s in model.stage_names}
    summary["tensors"] = sources
    summary["notes"] = notes
    log.info("initialised %s with %s: %s", name, method, summary["counts"])
    return summary
