"""User-facing error types: every failure the CLI reports as one clear line."""
from __future__ import annotations


class GraphConvertError(Exception):
    """Base of every error graph-convert reports on purpose (each maps to a documented exit code)."""


class ConvertError(GraphConvertError):
    """A problem with the user's input or options; the CLI prints it as one line and exits 2."""


class UnsupportedOpsError(ConvertError):
    """The model holds ops the TF emitter cannot translate (all of them are listed)."""

    def __init__(self, missing: list[tuple[str, str]], hint: str = ""):
        self.missing = missing
        self.hint = hint
        shown = ", ".join(f"{op} (node {name!r})" for op, name in missing[:50])
        more = f" and {len(missing) - 50} more" if len(missing) > 50 else ""
        super().__init__(f"unsupported ops for the TF emitter: {shown}{more}{'; ' + hint if hint else ''}")


class PassError(GraphConvertError):
    """A pass failed or broke the graph; names the pass and those that ran before it."""

    def __init__(self, pass_name: str, ran_before: list[str], reason: str):
        self.pass_name = pass_name
        self.ran_before = ran_before
        before = ", ".join(ran_before) if ran_before else "none"
        super().__init__(f"pass {pass_name!r} failed: {reason} (passes run before it: {before})")


class VerificationError(GraphConvertError):
    """Rewritten/emitted model disagrees with the original beyond tolerance."""

    def __init__(self, message: str, stage: str, culprit: str | None = None):
        self.stage = stage
        self.culprit = culprit
        super().__init__(message)


class StageError(GraphConvertError):
    """Something broke inside a stage that should not break (a TensorFlow runtime error, an
    emitter bug, a crash in the TFLite converter): names the stage, and the node when known."""

    def __init__(self, stage: str, reason: str, node: str | None = None):
        self.stage = stage
        self.node = node
        where = f" at node {node!r}" if node else ""
        super().__init__(f"stage {stage!r} failed{where}: {reason}")
