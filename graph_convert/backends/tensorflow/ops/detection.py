"""Detection post-processing: NonMaxSuppression on TFLite's NON_MAX_SUPPRESSION_V4, RoiAlign as
exact gathers.

NonMaxSuppression: the TFLite kernel does the greedy suppression (O(boxes * selected), no
boxes x boxes matrix); what it does not promise the same way as ONNX is fixed around it:
candidates are ordered here by (score descending, index ascending) with TOPK_V2 and the kernel is
given distinct synthetic scores in that order (so its own tie order never matters), ONNX's
strict ``score > score_threshold`` is applied here (filtered boxes get a synthetic score below the
kernel's threshold), both box formats become (y_min, x_min, y_max, x_max), a negative IoU
threshold becomes 0 (ONNX never suppresses boxes that do not overlap) and
``max_output_boxes_per_class`` is clamped to the number of boxes in int64 before the int32 cast.
TFLite's kernel suppresses at IoU >= threshold (TF and ONNX at >): a two-box fixture tells the graph
which kernel runs it. Zero-area boxes (which never suppress nor get suppressed in ONNX, and which
TFLite's kernel would select over and over) and an IoU threshold >= 1 bypass the kernel. The picks
are cut to their count, so ``selected_indices`` has exactly ONNX's (num_selected, 3) shape: a
dynamic dimension, no padding rows.
"""
from __future__ import annotations

import tensorflow as tf

from graph_convert.backends.tensorflow.ops.core import cast_back, emitter, lite_float, unsupported
from graph_convert.backends.tensorflow.ops.sampling import channels_last, result


def _corners(boxes, center: bool):
    """(..., 4) boxes as (y_min, x_min, y_max, x_max) in float32, as the reference computes them."""
    a, b, c, d = (boxes[..., i] for i in range(4))
    if center:  # (x_center, y_center, width, height)
        # a box of width or height <= 0 never overlaps anything in the reference (its min exceeds
        # its max, which no one orders back); TF's kernels would order it: it becomes a zero-area box
        c, d = tf.maximum(c, 0.0), tf.maximum(d, 0.0)
        return tf.stack([b - d / 2, a - c / 2, b + d / 2, a + c / 2], axis=-1)
    return tf.stack([tf.minimum(a, c), tf.minimum(b, d), tf.maximum(a, c), tf.maximum(b, d)], axis=-1)


def _suppresses_at_equality(boxes):
    """Whether the running NMS kernel suppresses a box whose IoU equals the threshold: a two-box
    fixture with IoU exactly 0.5, scaled by a 1 made from the boxes' data so that no converter
    folds it into the answer of the kernel it happens to evaluate with."""
    s = tf.reduce_sum(tf.reshape(boxes, [-1])[:1])
    one = tf.cast(tf.logical_or(tf.equal(s, s), tf.not_equal(s, s)), tf.float32)
    fixture = tf.constant([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]]) * one
    _, kept = tf.raw_ops.NonMaxSuppressionV4(boxes=fixture, scores=tf.constant([2.0, 1.0]), max_output_size=2,
                                             iou_threshold=0.5, score_threshold=0.0, pad_to_max_output_size=True)
    return tf.equal(kept, 1)


def _next_up(t):
    """The next float32 above ``t`` (t >= 0, finite), through its bit pattern."""
    return tf.bitcast(tf.bitcast(t, tf.int32) + 1, tf.float32)


def _scalar(x, j: int, dtype):
    return tf.cast(tf.reshape(x[j], [-1])[0], dtype) if len(x) > j and x[j] is not None else None


@emitter("NonMaxSuppression")
def emit_non_max_suppression(node, x, ctx):
    boxes = tf.cast(x[0], tf.float32)
    scores = tf.cast(x[1], tf.float32)
    nb, nc = boxes.shape[0], scores.shape[1]
    if nb is None or nc is None:
        raise unsupported(node, "an unknown number of batches or classes")
    max_out = _scalar(x, 2, tf.int64)
    if max_out is None or (nb * nc) == 0:
        return tf.zeros([0, 3], tf.int64)
    n_boxes = tf.shape(boxes, out_type=tf.int64)[1]
    max_out = tf.cast(tf.minimum(tf.maximum(max_out, 0), n_boxes), tf.int32)
    iou = _scalar(x, 3, tf.float32)
    iou = tf.constant(0.0) if iou is None else tf.maximum(iou, 0.0)
    no_suppression = iou >= 1.0  # an IoU never exceeds 1: ONNX keeps every candidate
    # TF's kernel suppresses IoU > threshold (as ONNX), TFLite's IoU >= threshold: the graph asks
    # the kernel it runs on and, on the second, passes the next float32 up (same decisions)
    kernel_iou = tf.where(_suppresses_at_equality(boxes), _next_up(iou), iou)
    score_thr = _scalar(x, 4, tf.float32)
    corners = _corners(boxes, bool(node.attr("center_point_box", 0)))
    # a box of zero area never suppresses nor is suppressed (ONNX); TFLite's kernel would select
    # it again and again (its IoU with itself is 0), so such boxes bypass the kernel
    proper = (corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1]) > 0.0
    n32 = tf.cast(n_boxes, tf.int32)
    rank_scores = tf.cast(n32 - tf.range(n32), tf.float32)  # distinct, descending, all >= 1
    parts = []
    for b in range(nb):
        for c in range(nc):
            s = scores[b, c]
            _, order = tf.math.top_k(s, k=n32, sorted=True)  # ties: the lower index first, as ONNX
            ranked = tf.gather(s, order)
            if score_thr is not None:  # ONNX keeps score > threshold (a prefix of the order)
                keep = ranked > score_thr
            else:  # all of them (a test the converter cannot fold into a constant)
                keep = tf.logical_or(tf.equal(ranked, ranked), tf.not_equal(ranked, ranked))
            area_ok = tf.gather(proper[b], order)
            synthetic = tf.where(keep & area_ok, rank_scores, -tf.ones_like(rank_scores))
            sel, valid = tf.raw_ops.NonMaxSuppressionV4(
                boxes=tf.gather(corners[b], order), scores=synthetic, max_output_size=max_out,
                iou_threshold=kernel_iou, score_threshold=tf.constant(0.0), pad_to_max_output_size=True)
            chosen = sel[:valid]
            hit = tf.scatter_nd(chosen[:, None], tf.ones_like(chosen), tf.reshape(n32, [1])) > 0
            # positions in score order: the kernel's picks plus the zero-area candidates, the first
            # max_output_boxes_per_class of them (zero-area boxes take part in that count)
            picked = tf.where(no_suppression, keep, hit | (keep & tf.logical_not(area_ok)))
            pos = tf.reshape(tf.where(picked), [-1])[:max_out]
            box = tf.cast(tf.gather(order, pos), tf.int64)
            bc = tf.broadcast_to(tf.constant([[b, c]], tf.int64), tf.stack([tf.shape(box)[0], 2]))
            parts.append(tf.concat([bc, box[:, None]], axis=1))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def _roi_axis_taps(start, bin_size, pooled: int, grid: int, size: int):
    """Per sample along one axis of every RoI: [(index (R, pooled, 1), weight)] for its two taps,
    each sample a list, as the reference's ``pre_calc_for_bilinear_interpolate`` computes them."""
    samples = []
    p = tf.constant([[float(i) for i in range(pooled)]])
    for i in range(grid):
        y = start[:, None] + p * bin_size[:, None] + (i + 0.5) * bin_size[:, None] / grid  # (R, pooled)
        inside = tf.cast((y >= -1.0) & (y <= float(size)), tf.float32)
        y = tf.maximum(y, 0.0)
        low = tf.floor(y)
        edge = low >= size - 1
        low = tf.where(edge, tf.fill(tf.shape(low), float(size - 1)), low)
        high = tf.where(edge, low, low + 1)
        y = tf.where(edge, low, y)
        ly = y - low
        samples.append([(tf.cast(low, tf.int32), (1.0 - ly) * inside), (tf.cast(high, tf.int32), ly * inside)])
    return samples


@emitter("RoiAlign", layout_aware=True)
def emit_roi_align(node, x, ctx):
    xc, dt = lite_float(node, channels_last(node, x[0], 0))
    _, h, w, c = xc.shape.as_list()
    if None in (h, w, c):
        raise unsupported(node, "unknown spatial or channel size")
    rois = tf.cast(x[1], tf.float32)
    batch = tf.cast(tf.reshape(x[2], [-1]), tf.int32)
    oh, ow = int(node.attr("output_height", 1)), int(node.attr("output_width", 1))
    ratio = int(node.attr("sampling_ratio", 0))
    if ratio <= 0:
        raise unsupported(node, "sampling_ratio 0 (the number of samples per bin depends on each RoI's size)")
    scale = float(node.attr("spatial_scale", 1.0))
    default_mode = "half_pixel" if ctx.opset >= 16 else "output_half_pixel"
    half = node.attr("coordinate_transformation_mode", default_mode) == "half_pixel"
    offset = 0.5 if half else 0.0
    x0, y0, x1, y1 = (rois[:, i] * scale - offset for i in range(4))
    rw, rh = x1 - x0, y1 - y0
    if not half:
        rw, rh = tf.maximum(rw, 1.0), tf.maximum(rh, 1.0)
    ys = _roi_axis_taps(y0, rh / oh, oh, ratio, h)  # indices (R, oH)
    xs = _roi_axis_taps(x0, rw / ow, ow, ratio, w)  # indices (R, oW)
    rows = tf.reshape(xc, [-1, c])
    base = (batch * (h * w))[:, None, None]
    avg = node.attr("mode", "avg") == "avg"
    y = None
    for sy in ys:
        for sx in xs:
            sample = None
            for iy, wy in sy:
                for ix, wx in sx:
                    flat = base + iy[:, :, None] * w + ix[:, None, :]
                    part = tf.gather(rows, flat) * (wy[:, :, None] * wx[:, None, :])[..., None]
                    if sample is None:
                        sample = part
                    else:  # the reference's max mode takes the largest weighted corner
                        sample = sample + part if avg else tf.maximum(sample, part)
            if y is None:
                y = sample
            else:
                y = y + sample if avg else tf.maximum(y, sample)
    if avg:
        y = y / float(max(ratio * ratio, 1))
    return result(node, cast_back(y, dt))
