"""Built-in passes, registered through the same plugin API a third party uses."""
from __future__ import annotations


def register(registry) -> None:
    """Entry point ``graph_convert.plugins: builtin``."""
    from graph_convert_passes import (
        attention_scale_to_query,
        batchnorm_to_affine,
        cancel_reshape_pair,
        constants_to_initializers,
        drop_empty_concat_inputs,
        drop_nan_guard,
        eliminate_identity,
        expand_qoperators,
        fold_batchnorm,
        fold_channel_permutation,
        fold_constants,
        fold_scale_into_projection,
        fuse_activations,
        fuse_normalizations,
        heads_first,
        io_channels_last,
        merge_slices,
        prune,
        push_transposes,
        recognize_depth_space,
        split_group_norm,
        to_channels_last,
    )
    from graph_convert_passes.lib import indexing_handlers, quantized_layout, signal_attention_handlers, subgraph_handlers, transpose_handlers
    for mod in (constants_to_initializers, expand_qoperators, fold_constants, drop_empty_concat_inputs, eliminate_identity, fold_batchnorm, batchnorm_to_affine, drop_nan_guard,
                fuse_activations, fuse_normalizations, attention_scale_to_query, recognize_depth_space, split_group_norm, fold_channel_permutation, to_channels_last, io_channels_last,
                push_transposes, heads_first, merge_slices, cancel_reshape_pair, fold_scale_into_projection, prune):
        registry.add_pass(mod.PASS)
    for op_type, handler in {**transpose_handlers.HANDLERS, **indexing_handlers.HANDLERS, **subgraph_handlers.HANDLERS,
                             **signal_attention_handlers.HANDLERS, **quantized_layout.HANDLERS}.items():
        registry.add_transpose_handler(op_type, handler)
