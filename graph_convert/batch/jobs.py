"""What a batch converts: one :class:`Job` per model, from .onnx files, folders of them,
``file.py:factory`` / ``package.module:attr`` specs and manifests.

A manifest is a ``.txt`` file with one model per line (``SOURCE [--name NAME] [--timeout S]
[--memory-limit SIZE] [convert options]``, ``#`` comments; relative paths are relative to the
manifest) or a ``.json`` file: a list of ``{"source": ..., "name": ..., "input_shape": [...],
"args": [...], "timeout": ..., "memory_limit": ...}`` entries.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable

from graph_convert.errors import ConvertError
from graph_convert.conversion.output import MARKER

MANIFEST_SUFFIXES = (".txt", ".json")
# names a model's output folder may not take: the batch's own files
RESERVED = {"summary.json", "summary.md"}
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass
class Job:
    """One model of a batch: where it comes from and how its ``convert`` runs."""

    name: str  # its output folder under OUTROOT
    source: str  # as ``graph-convert convert`` takes it (absolute when it is a path)
    args: list[str] = field(default_factory=list)  # convert options (the batch's, then the model's own)
    cwd: str = "."  # where its convert runs (a manifest's folder, so its relative paths hold)
    timeout: float | None = None  # seconds
    memory_limit: int | None = None  # bytes of resident memory, the model's processes together
    origin: str = ""  # where it was named (``manifest.txt:3``, a folder, the command line)

    def fingerprint(self) -> str:
        """Changes when the source file's bytes or the convert options change (a re-run redoes it)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.source, self.args]).encode())
        path = source_file(self.source)
        if path is not None and os.path.isfile(path):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        return h.hexdigest()[:32]


def source_file(source: str) -> str | None:
    """The file a source spec reads (``net.onnx``, the ``.py`` of ``file.py:factory``), or None."""
    head, sep, _ = source.rpartition(":")
    if sep and head.endswith(".py"):
        return head
    if source.endswith(".onnx"):
        return source
    return None


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """``8G``, ``512M``, ``1.5GB``, ``1000000`` -> bytes (binary units: 1G = 2**30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ConvertError(f"{option} {text!r}: give a size such as 8G, 512M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def parse_timeout(text, option: str = "--timeout") -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise ConvertError(f"{option} {text!r}: give a positive number of seconds")
    return v


def _spec_name(source: str) -> str:
    path = source_file(source)
    if path is not None:
        stem = os.path.splitext(os.path.basename(path))[0]
        attr = source.rpartition(":")[2] if path != source else ""
        return stem if attr in ("", "make", "model", "build") else f"{stem}_{attr}"
    return source.replace(":", "_").replace(".", "_")


def _is_spec(text: str) -> bool:
    head, sep, attr = text.rpartition(":")
    return bool(sep) and bool(head) and attr.isidentifier()


class Collector:
    """Turns the command line's INPUTS into jobs. ``check_args(args, where)`` validates a model's
    convert options (it raises ConvertError naming ``where``)."""

    def __init__(self, base_args: list[str], check_args: Callable[[list[str], str], None], timeout=None, memory_limit=None,
                 exclude: str | None = None):
        self.base_args = list(base_args)
        self.exclude = os.path.realpath(exclude) if exclude else None  # OUTROOT: never a source of models
        self.check_args = check_args
        self.timeout, self.memory_limit = timeout, memory_limit
        self.jobs: list[Job] = []

    def add(self, item: str) -> None:
        if os.path.isdir(item):
            found = self._scan(item)
            if not found:
                raise ConvertError(f"batch input {item}: a folder with no .onnx file in it")
            for path in found:
                self._job(os.path.abspath(path), [], origin=item)
        elif item.endswith(MANIFEST_SUFFIXES) and os.path.isfile(item):
            (self._json_manifest if item.endswith(".json") else self._text_manifest)(item)
        elif item.endswith(".onnx"):
            if not os.path.isfile(item):
                raise ConvertError(f"batch input {item}: no such file")
            self._job(os.path.abspath(item), [], origin="command line")
        elif _is_spec(item):
            head = item.rpartition(":")[0]
            if head.endswith(".py") and not os.path.isfile(head):
                raise ConvertError(f"batch input {item}: no such file {head}")
            self._job(os.path.abspath(head) + ":" + item.rpartition(":")[2] if head.endswith(".py") else item, [],
                      origin="command line")
        else:
            raise ConvertError(f"batch input {item}: not an .onnx file, a folder, a file.py:factory / module:attr spec "
                               f"or a manifest (.txt, .json)")

    def _scan(self, folder: str) -> list[str]:
        """Every .onnx under ``folder``, sorted; graph-convert's own outputs (and OUTROOT) are not
        models to convert (a batch writing into the folder it reads must not find them next time)."""
        found = []
        for dp, dirs, files in os.walk(folder):
            real = os.path.realpath(dp)
            if MARKER in files or (self.exclude and (real == self.exclude or real.startswith(self.exclude + os.sep))):
                dirs[:] = []
                continue
            dirs.sort()
            found += [os.path.join(dp, f) for f in sorted(files) if f.endswith(".onnx")]
        return found

    def _job(self, source: str, args: list[str], *, origin: str, name: str | None = None, cwd: str = ".",
             timeout=None, memory_limit=None) -> None:
        full = self.base_args + args
        self.check_args([source] + full, origin)
        self.jobs.append(Job(name or "", source, full, os.path.abspath(cwd), timeout if timeout is not None else self.timeout,
                             memory_limit if memory_limit is not None else self.memory_limit, origin))
        if name is not None:
            self.jobs[-1].name = _checked_name(name, origin)

    def _text_manifest(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for no, line in enumerate(lines, 1):
            where = f"{path}:{no}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise ConvertError(f"{where}: {e}") from None
            if words:
                self._manifest_entry(words[0], words[1:], where, folder)

    def _json_manifest(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except ValueError as e:
            raise ConvertError(f"{path}: not valid JSON ({e})") from None
        if isinstance(entries, dict):
            entries = entries.get("models")
        if not isinstance(entries, list):
            raise ConvertError(f"{path}: a JSON manifest is a list of entries (or {{\"models\": [...]}})")
        for no, e in enumerate(entries):
            where = f"{path}[{no}]"
            if isinstance(e, str):
                e = {"source": e}
            if not isinstance(e, dict) or not isinstance(e.get("source"), str):
                raise ConvertError(f"{where}: each entry needs a \"source\" string")
            unknown = set(e) - {"source", "name", "input_shape", "args", "timeout", "memory_limit"}
            if unknown:
                raise ConvertError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            words = []
            for k in ("name", "timeout", "memory_limit"):
                if e.get(k) is not None:
                    words += [f"--{k.replace('_', '-')}", str(e[k])]
            shapes = e.get("input_shape") or []
            for s in [shapes] if isinstance(shapes, str) else shapes:
                words += ["--input-shape", str(s)]
            extra = e.get("args") or []
            if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
                raise ConvertError(f"{where}: \"args\" must be a list of strings")
            self._manifest_entry(e["source"], words + extra, where, folder)

    def _manifest_entry(self, source: str, words: list[str], where: str, folder: str) -> None:
        own: dict[str, str] = {}
        rest: list[str] = []
        it = iter(words)
        for w in it:
            key, eq, val = w.partition("=")
            if key in ("--name", "--timeout", "--memory-limit"):
                if not eq:
                    val = next(it, None)
                    if val is None:
                        raise ConvertError(f"{where}: {key} needs a value")
                own[key] = val
            else:
                rest.append(w)
        src_path = source.rpartition(":")[0] if _is_spec(source) and source.rpartition(":")[0].endswith(".py") else source
        if src_path.endswith((".py", ".onnx")):
            full = os.path.join(folder, src_path)
            if not os.path.isfile(full):
                raise ConvertError(f"{where}: no such file {src_path} (relative paths are relative to the manifest)")
            source = os.path.abspath(full) + source[len(src_path):]
        timeout = parse_timeout(own["--timeout"], f"{where}: --timeout") if "--timeout" in own else None
        mem = parse_size(own["--memory-limit"], f"{where}: --memory-limit") if "--memory-limit" in own else None
        self._job(source, rest, origin=where, name=own.get("--name"), cwd=folder, timeout=timeout, memory_limit=mem)

    def finish(self) -> list[Job]:
        """Give every job without one a unique name (its file's stem, then ``folder_stem``, then
        ``stem-2``...). Explicit names must be unique."""
        if not self.jobs:
            raise ConvertError("batch: no models given")
        taken: dict[str, Job] = {}
        for j in self.jobs:
            if j.name:
                if j.name in taken:
                    raise ConvertError(f"{j.origin}: name {j.name!r} is already used by {taken[j.name].origin}")
                taken[j.name] = j
        for j in self.jobs:
            if not j.name:
                j.name = _unique(j.source, taken)
                taken[j.name] = j
        return self.jobs


def _checked_name(name: str, where: str) -> str:
    if not _NAME_OK.fullmatch(name) or name in RESERVED:
        raise ConvertError(f"{where}: --name {name!r}: use letters, digits and . _ + - (not starting with . or -, "
                           f"not {' or '.join(sorted(RESERVED))})")
    return name


def _clean(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._-") or "model"
    return text[:100]


def _unique(source: str, taken: dict) -> str:
    base = _clean(_spec_name(source))
    path = source_file(source)
    parent = _clean(os.path.basename(os.path.dirname(path))) if path else ""
    candidates = [base] + ([f"{parent}_{base}"] if parent else [])
    for c in candidates:
        if c not in taken and c not in RESERVED:
            return c
    n = 2
    while f"{candidates[-1]}-{n}" in taken:
        n += 1
    return f"{candidates[-1]}-{n}"
