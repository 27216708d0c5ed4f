"""The output folder: built beside its destination, moved into place atomically, and never
allowed to delete or replace anything graph-convert did not write.

The rules (README "Output directory"):

- a run builds everything in a private ``.NAME.tmp-XXXXXXXX`` sibling of the output, holding an
  exclusive ``flock`` on it for the whole run; a sibling whose lock nobody holds belongs to a run
  that died (``kill -9``) and is removed; a sibling whose lock is held is a live run into the
  same output, and the younger of the two stops with a clear message;
- the output must not be, or contain, the current directory, the source file or a plugin; an
  existing output is replaced (``--overwrite``) only when graph-convert wrote it: its marker file
  lists every entry and nothing else is in the folder;
- the final move is ``renameat2(RENAME_NOREPLACE)``: it cannot replace a folder that someone
  created while the run went on; a replaced output is first moved aside and checked again, so a
  file that appeared in it during the run is never deleted;
- the folder gets the user's umask (``mkdtemp`` makes it 0700).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from typing import Iterable

from graph_convert.errors import ConvertError

MARKER = ".graph-convert.json"
# what graph-convert writes into an output folder (an output made before the marker existed is
# recognised by its report.json and these names)
# (report.html and explorer/ came after the marker, but an output whose marker was lost still has them)
KNOWN_ENTRIES = frozenset({"saved_model", "model.rewritten.onnx", "model.rewritten.onnx.data", "report.json", "model_float32.tflite",
                           "model_float16.tflite", "model_dynamic_range_quant.tflite", "model_full_integer_quant.tflite", MARKER,
                           "report.html", "explorer"})
_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class OutputError(ConvertError):
    """The output folder cannot be written without touching something that is not ours."""


def current_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(old)
    return old


_renameat2 = None


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError when ``dst`` exists (even as an
    empty folder, which plain rename(2) would silently replace)."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2:
        at_fdcwd, noreplace = -100, 1
        if _renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: the filesystem has no RENAME_NOREPLACE
            raise OSError(err, os.strerror(err), src)
    # fallback (no renameat2): a folder in the way is refused; the per-output lock keeps other
    # graph-convert runs out of the gap between the check and the rename
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _entries_if_ours(folder: str) -> set[str] | None:
    """The names in ``folder`` when graph-convert wrote it and nothing else is in it, else None."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return None
    listed: set[str] | None = None
    try:
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
        if marker.get("tool") == "graph-convert":
            listed = set(marker.get("entries", [])) | {MARKER}
    except (OSError, ValueError, AttributeError):
        try:  # written before the marker existed: its report.json says so
            with open(os.path.join(folder, "report.json")) as f:
                if "graph_convert_version" in json.load(f):
                    listed = set(KNOWN_ENTRIES)
        except (OSError, ValueError, TypeError):
            return None
    return names if listed is not None and names <= listed else None


def is_ours(folder: str) -> bool:
    """True when ``folder`` is a complete graph-convert output and holds nothing else."""
    return _entries_if_ours(folder) is not None


def remove_if_unlocked(path: str) -> bool:
    """Remove the folder ``path`` when nobody holds its lock (its run or task died); True if so."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # alive
    finally:
        os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
    return True


def remove_dead_temps(output_dir: str | os.PathLike) -> int:
    """Remove the temporary folders of runs into ``output_dir`` that died (``kill -9``): those whose
    lock nobody holds. A live run's folder is left alone. Returns how many were removed."""
    path = os.path.abspath(os.fspath(output_dir))
    parent, name = os.path.dirname(path), os.path.basename(path)
    pattern = re.compile(r"\." + re.escape(name) + r"\.tmp-[0-9a-f]{16}-[0-9a-f]{8}")
    entries = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    return sum(remove_if_unlocked(os.path.join(parent, e)) for e in entries if pattern.fullmatch(e))


def _foreign(folder: str) -> str:
    """A short list of what in ``folder`` graph-convert would not have written."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return "unreadable"
    odd = [n for n in names if n not in KNOWN_ENTRIES] or names
    return ", ".join(odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")


def _blocked_signals():
    class _Block:
        def __enter__(self):
            if hasattr(signal, "pthread_sigmask"):
                self.old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

        def __exit__(self, *exc):
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_SETMASK, self.old)
    return _Block()


class OutputDir:
    """One run's output: ``prepare()`` checks the destination and makes the locked temp folder,
    ``commit()`` moves it into place, ``discard()`` removes it (always safe to call)."""

    def __init__(self, output_dir: str | os.PathLike, *, overwrite: bool = False, protected: Iterable[str] = ()):
        self.requested = os.fspath(output_dir)
        self.path = os.path.abspath(self.requested)
        self.parent, self.name = os.path.dirname(self.path), os.path.basename(self.path)
        self.overwrite = overwrite
        self.protected = [(what, p) for what, p in protected if p]
        self.tmp: str | None = None
        self._lock_fd: int | None = None
        self._existed = False
        # .NAME.tmp-<creation time, ns, hex>-<random>: the time orders two live runs
        self._tmp_re = re.compile(r"\." + re.escape(self.name) + r"\.tmp-([0-9a-f]{16})-[0-9a-f]{8}")
        self._legacy_re = re.compile(r"\." + re.escape(self.name) + r"\.tmp-[A-Za-z0-9_]{8}")  # mkdtemp's, before 0.2

    # -- checks ---------------------------------------------------------------------------------
    def _refuse(self, why: str) -> OutputError:
        return OutputError(f"output {self.requested}: {why}; nothing was touched")

    def _check_destination(self) -> None:
        if not self.name or self.path == os.sep:
            raise self._refuse("not a folder graph-convert can write")
        real = os.path.realpath(self.path)
        for what, p in [("the current directory", os.getcwd())] + [(f"{what} {p}", p) for what, p in self.protected]:
            if _inside(os.path.realpath(p), real):
                here = "is" if os.path.realpath(p) == real else "contains"
                raise self._refuse(f"{here} {what}")
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise self._refuse("exists and is not a folder")
        if os.path.isdir(self.path) and os.listdir(self.path):
            if not self.overwrite:
                raise self._refuse("folder exists and is not empty (--overwrite replaces a folder that graph-convert wrote)")
            if _entries_if_ours(self.path) is None:
                raise self._refuse(f"holds files graph-convert did not write ({_foreign(self.path)}), "
                                   f"so --overwrite will not replace it")

    # -- lifecycle ------------------------------------------------------------------------------
    def prepare(self) -> str:
        self._check_destination()
        self._existed = os.path.isdir(self.path)
        if not os.path.isdir(self.parent):
            if os.path.lexists(self.parent):
                raise self._refuse(f"parent {self.parent} is not a folder")
            try:
                os.makedirs(self.parent, exist_ok=True)
            except OSError as e:
                raise self._refuse(f"cannot create parent folder ({e.strerror})") from None
        self.tmp = self._make_tmp()
        try:
            self._lock_fd = os.open(self.tmp, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._sweep_siblings()
        except BaseException:
            self.discard()
            raise
        return self.tmp

    def _make_tmp(self) -> str:
        for _ in range(100):
            path = os.path.join(self.parent, f".{self.name}.tmp-{time.time_ns():016x}-{secrets.token_hex(4)}")
            try:
                os.mkdir(path, 0o700)
                return path
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError(f"output {self.requested}: cannot write in {self.parent} ({e.strerror})") from None
        raise OutputError(f"output {self.requested}: cannot make a temporary folder in {self.parent}")

    def _sweep_siblings(self) -> None:
        """Remove temp folders of dead runs into this output; stop if an older run is live."""
        mine = self._tmp_re.fullmatch(os.path.basename(self.tmp)).group(1)
        for entry in sorted(os.listdir(self.parent)):
            path = os.path.join(self.parent, entry)
            ours = self._tmp_re.fullmatch(entry)
            if path == self.tmp or not (ours or self._legacy_re.fullmatch(entry)):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone already
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live run
                    if ours and (ours.group(1), entry) < (mine, os.path.basename(self.tmp)):
                        raise OutputError(f"output {self.requested}: another graph-convert run is writing it "
                                          f"(its temporary folder {entry} is in use); nothing was touched")
                    continue  # the younger run (the other one) stops
                shutil.rmtree(path, ignore_errors=True)  # its owner is gone
            finally:
                os.close(fd)

    def commit(self, entries: Iterable[str]) -> None:
        """Write the marker, give the folder the user's umask and move it into place."""
        with open(os.path.join(self.tmp, MARKER), "w") as f:
            json.dump({"tool": "graph-convert", "entries": sorted(set(entries) | {MARKER})}, f, indent=1)
        os.chmod(self.tmp, 0o777 & ~current_umask())
        with _blocked_signals():  # a signal must not split the swap in two
            self._move_into_place()
        self.tmp = None
        self._unlock()

    def _move_into_place(self) -> None:
        if not self._existed and os.path.lexists(self.path):
            raise OutputError(f"output {self.requested}: was created by someone else while this run went on; "
                              f"it was left as it is and this run's results were discarded")
        if os.path.isdir(self.path) and not os.path.islink(self.path) and os.listdir(self.path):
            self._replace()
            return
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            try:  # an empty folder that was there at the start: fails if anything arrived since
                os.rmdir(self.path)
            except OSError:
                raise self._refuse("files appeared in it during the run") from None
        try:
            rename_noreplace(self.tmp, self.path)
        except FileExistsError:
            raise OutputError(f"output {self.requested}: was created by someone else while this run went on; "
                              f"it was left as it is and this run's results were discarded") from None

    def _replace(self) -> None:
        if not self.overwrite:
            raise self._refuse("files appeared in it during the run")
        aside = tempfile.mkdtemp(prefix=f".{self.name}.old-", dir=self.parent)
        prev = os.path.join(aside, "previous")
        os.rename(self.path, prev)  # from here on nobody can add to it under its name
        if _entries_if_ours(prev) is None:  # something appeared during the run: not ours to delete
            try:
                rename_noreplace(prev, self.path)
                os.rmdir(aside)
            except OSError:
                raise OutputError(f"output {self.requested}: files appeared in it during the run; the folder is kept "
                                  f"at {prev}") from None
            raise self._refuse("files appeared in it during the run")
        try:
            rename_noreplace(self.tmp, self.path)
        except FileExistsError:
            raise OutputError(f"output {self.requested}: was created by someone else while this run went on; "
                              f"the previous output is kept at {prev}") from None
        shutil.rmtree(aside, ignore_errors=True)

    def discard(self) -> None:
        if self.tmp is not None and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def protected_paths(source, plugins: Iterable[str]) -> list[tuple[str, str]]:
    """Files an output folder must never swallow: the source file and the plugins' modules."""
    out = []
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = text.rpartition(":")[0] if text.rpartition(":")[0].endswith(".py") else text
        if os.path.exists(path):
            out.append(("the source", os.path.abspath(path)))
    from graph_convert.plugin_import import plugin_location

    for mod in plugins:
        where = plugin_location(mod)
        if where is not None:
            out.append((f"plugin {mod!r} at", where))
    return out
