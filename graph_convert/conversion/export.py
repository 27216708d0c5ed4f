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
from graph_convert.options import parse_shape  # noqa: F401 - its old home
from graph_convert.process import quiet_python_output


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


def load_twice(spec: str):
    """``load_torch_model(spec)`` built twice, the two builds' weights compared: the second build,
    or one line (exit 2) when they differ. For ``graph-convert verify``: a factory that initialises
    its weights at random without a seed gives another model at every call, so the candidate
    (converted from an earlier build) could only be blamed for a difference that is the source's;
    one build's fingerprints are kept, never two models at once."""
    first = _fingerprints(load_torch_model(spec))
    module = load_torch_model(spec)
    second = _fingerprints(module)
    differ = [name for name in first if first[name] != second.get(name)] + [n for n in second if n not in first]
    if differ:
        attr = spec.rpartition(":")[2]
        raise ConvertError(f"{spec}: built twice, {attr} gave different weights ({len(differ)} of {len(first)} tensors differ, "
                           f"first {differ[0]!r}): it initialises them at random without a seed, so no file converted from "
                           f"an earlier build can match it; seed it (torch.manual_seed) or load trained weights in {attr}")
    return module


def _fingerprints(module) -> dict[str, str]:
    """A digest of every parameter and buffer's bytes, by name."""
    import hashlib

    import torch

    out = {}
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=False).items():
            raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            out[name] = f"{t.dtype}{tuple(t.shape)}:{hashlib.blake2b(raw.tobytes(), digest_size=16).hexdigest()}"
    return out


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
