"""Int8 CPU inference: post-training static quantisation with PyTorch FX.

Conv+BN+ReLU are fused and run as int8 kernels (per-channel weights, activations scaled by
observers). Observers follow the x86 backend's qconfig (activations on 7 bits, so that CPUs
without VNNI cannot saturate their 16-bit pair sums); the kernels are oneDNN's wherever torch has
them. The x86 engine picks oneDNN only on CPUs with AVX-512 VNNI and FBGEMM elsewhere, and on
AVX2-only CPUs oneDNN ran the shipped models faster with the same predictions (docs/benchmarks.md,
"Model forward rate"). A bundle stores only the calibrated observers (plain float tensors, beside
the fp32 weights), so loading stays a safetensors read: the quantised model is rebuilt from the fp32 one
on load, deterministically, with no calibration data needed."""

from __future__ import annotations

import copy
import warnings

import torch

ENGINE = "x86"  # the qconfig (observers) a calibration is made for
KERNELS = "onednn"  # the engine the int8 model is converted (weights packed) for, when present
MARK = "activation_post_process"  # FX names every activation observer with this prefix


def available() -> bool:
    return ENGINE in torch.backends.quantized.supported_engines


def _prepare(model: torch.nn.Module, size: int = 48, float_modules: tuple = ()) -> torch.nn.Module:
    import torch.fx.config
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = ENGINE
    # FX records a symbolised stack trace for every node it traces (for its error messages):
    # that was most of loading an int8 bundle, paid by every labeling process and actor
    # (docs/labeling.md, "How it is built (design)")
    traces = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    mapping = get_default_qconfig_mapping(ENGINE)
    for name in float_modules:  # e.g. a regression output, whose values int8 steps would blur
        mapping = mapping.set_module_name(name, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        try:
            return prepare_fx(
                copy.deepcopy(model).float().eval(),
                mapping,
                (torch.zeros(1, 1, size, size),),
            )
        finally:
            torch.fx.config.do_not_emit_stack_traces = traces


@torch.no_grad()
def calibrate(model: torch.nn.Module, batches, size: int = 48, float_modules: tuple = ()) -> dict[str, torch.Tensor]:
    """Run normalised input batches through observers; returns their state (what to store).
    `float_modules`: names of modules kept in float (pass the same to convert)."""
    prepared = _prepare(model, size, float_modules)
    for x in batches:
        prepared(x)
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items() if MARK in k}


@torch.no_grad()
def convert(model: torch.nn.Module, observers: dict[str, torch.Tensor], size: int = 48,
            float_modules: tuple = ()) -> torch.nn.Module:
    """The int8 model for an fp32 model and the observer state calibrate() returned."""
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepare(model, size, float_modules)
    expected = {k for k in prepared.state_dict() if MARK in k}
    if set(observers) != expected:
        raise ValueError("int8 calibration does not match this model's layers")
    prepared.load_state_dict(observers, strict=False)
    if KERNELS in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = KERNELS  # packs the weights for its kernels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()
