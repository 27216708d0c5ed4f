"""Helpers the built-in passes share (and a plugin may use): :mod:`expr` (formulas as polynomials
over tensors), :mod:`rewrite_rules` (rule passes), :mod:`fused_ops` (model-local function ops),
:mod:`movement` (how data-movement ops move an index array), :mod:`transpose_handlers` (the layout
pass's per-op table)."""
