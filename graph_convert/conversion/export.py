"""PyTorch -> ONNX: load a model from ``file.py:factory`` / ``package.module:attr`` and export it
with torch.onnx's default (dynamo) exporter, falling back to the legacy TorchScript exporter."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Sequence

import onnx

from graph_convert.errors import ConvertError
from graph_convert.process import quiet_python_output


def parse_shape(text: str, option: str = "--input-shape") -> tuple[str | None, tuple[int, ...]]:
    """``"1,3,224,224"`` or ``"name=1,3,224,224"`` -> (name or None, dims)."""
    name = None
    spec = text.strip()
    if "=" in spec:
        name, spec = spec.split("=", 1)
        name = name.strip()
        if not name:
            raise ConvertError(f"{option} {text!r}: empty input name before '='")
    parts = [p.strip() for p in spec.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ConvertError(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConvertError(f"{option} {text!r}: every dimension must be a positive integer")
    return name, dims


def is_torch_spec(source: str) -> bool:
    """``x.py:attr`` or ``pkg.mod:attr`` (and not a Windows drive letter or an .onnx path)."""
    if source.endswith(".onnx") or ":" not in source:
        return False
    mod, _, attr = source.rpartition(":")
    return bool(mod) and attr.isidentifier()


def load_torch_model(spec: str):
    """Import the object named by ``spec`` and return an ``nn.Module`` in eval mode."""
    import torch

    mod_part, _, attr = spec.rpartition(":")
    if mod_part.endswith(".py"):
        if not os.path.isfile(mod_part):
            raise ConvertError(f"{spec}: no such file {mod_part!r}")
        # The module name reaches the exported ONNX (node metadata names the classes' modules), so
        # it must not depend on the process: a per-process hash() made two runs differ. The file's
        # own name is enough (the module is never put into sys.modules, so names cannot clash).
        stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(mod_part))[0])
        name = f"_graph_convert_user_{stem}"
        mspec = importlib.util.spec_from_file_location(name, mod_part)
        module = importlib.util.module_from_spec(mspec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(mod_part)))
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            raise ConvertError(f"{spec}: importing {mod_part} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(mod_part)
        except ImportError as e:
            raise ConvertError(f"{spec}: cannot import module {mod_part!r} ({e})") from None
    if not hasattr(module, attr):
        raise ConvertError(f"{spec}: {mod_part} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ConvertError(f"{spec}: {attr!r} is neither an nn.Module nor a factory")
        try:
            obj = obj()
        except Exception as e:
            raise ConvertError(f"{spec}: calling {attr}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ConvertError(f"{spec}: {attr}() returned {type(obj).__name__}, not an nn.Module")
    return obj.eval()


def export(module, example_inputs: Sequence[Any], path: str, opset: int | None = None, dynamic_batch: bool = False) -> str:
    """Export to ``path``; returns which exporter produced the file ("dynamo" or "legacy").
    ``dynamic_batch``: dim 0 of every tensor input of rank >= 1 is exported symbolic."""
    import torch

    args = tuple(example_inputs)
    batched = [isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args]
    if dynamic_batch:
        # a batch of 1 would be specialised away by torch.export: trace with 2 (same samples)
        args = tuple(a.expand(2, *a.shape[1:]).contiguous() if b and a.shape[0] == 1 else a for a, b in zip(args, batched))
    errors = []
    for kind in ("dynamo", "legacy"):
        try:
            with quiet_python_output():
                kw = {"dynamo": kind == "dynamo"}
                if opset is not None:
                    kw["opset_version"] = opset
                elif kind == "legacy":
                    kw["opset_version"] = 17
                if dynamic_batch and kind == "dynamo":
                    batch = torch.export.Dim("batch")
                    kw["dynamic_shapes"] = tuple({0: batch} if b else None for b in batched)
                elif dynamic_batch:
                    names = [f"input_{i}" for i in range(len(args))]
                    kw["input_names"] = names
                    kw["dynamic_axes"] = {n: {0: "batch"} for n, b in zip(names, batched) if b}
                with torch.no_grad():
                    torch.onnx.export(module, args, path, **kw)
            onnx.checker.check_model(path)
            return kind
        except Exception as e:  # the fallback exists exactly for exporter failures
            errors.append(f"{kind}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise ConvertError("torch.onnx.export failed with both exporters (" + "; ".join(errors) + ")")
