"""The selection rule (checks/selection.py): outputs traced to a NonMaxSuppression / TopK selection
accept exactly the differences float rounding can cause (tied rows reordered, the other of two
tied candidates kept at the cut) and reject everything else. The reference is the real ONNX
Runtime; the candidates are its outputs edited the way a wrong converter would get them wrong."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graph_convert.checks.equivalence import Draw, Verifier
from graph_convert.checks.selection import trace
from graph_convert.errors import VerificationError

N = 12


def _nms_model(max_out: int, iou: float) -> onnx.ModelProto:
    """boxes (1, N, 4), scores (1, 1, N) -> NMS -> 'selected' (its indices) and 'dets' (rows of
    box + score gathered by them, as ultralytics' exporter lays them out); 'area' does not depend
    on the selection."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"]),
        helper.make_node("Gather", ["selected", "two"], ["col"], axis=1),
        helper.make_node("Squeeze", ["boxes", "zero"], ["boxes2"]),
        helper.make_node("Gather", ["boxes2", "col"], ["sel_boxes"], axis=0),
        helper.make_node("Reshape", ["scores", "flat"], ["scores1"]),
        helper.make_node("Gather", ["scores1", "col"], ["sel_scores"], axis=0),
        helper.make_node("Unsqueeze", ["sel_scores", "one"], ["sel_scores2"]),
        helper.make_node("Concat", ["sel_boxes", "sel_scores2"], ["dets"], axis=1),
        helper.make_node("ReduceSum", ["boxes", "neg1"], ["area"], keepdims=0),
    ]
    inits = [helper.make_tensor("max_out", TensorProto.INT64, [1], [max_out]),
             helper.make_tensor("iou", f, [1], [iou]),
             helper.make_tensor("two", TensorProto.INT64, [], [2]),
             helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("neg1", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("flat", TensorProto.INT64, [1], [-1])]
    g = helper.make_graph(nodes, "nms_rows",
                          [helper.make_tensor_value_info("boxes", f, [1, N, 4]), helper.make_tensor_value_info("scores", f, [1, 1, N])],
                          [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3]),
                           helper.make_tensor_value_info("dets", f, [None, 5]), helper.make_tensor_value_info("area", f, [1, N])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(rng: np.random.Generator, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Boxes that never overlap (a grid of unit squares, random sizes below 1), the given scores."""
    corner = np.stack([np.arange(N) * 2.0, np.zeros(N)], 1)
    size = rng.uniform(0.3, 0.9, (N, 2))
    boxes = np.concatenate([corner, corner + size], 1)[None].astype(np.float32)
    return {"boxes": boxes, "scores": scores.reshape(1, 1, N).astype(np.float32)}


@pytest.fixture(scope="module")
def case():
    """Scores with two exact ties (boxes 3 and 7 at 0.8; boxes 5 and 9 at the cut of max_out=7)."""
    rng = np.random.default_rng(7)
    s = rng.uniform(0.0, 0.5, N)
    s[[0, 1, 2, 4]] = [0.95, 0.9, 0.85, 0.82]
    s[[3, 7]] = 0.8
    s[[5, 9]] = 0.7  # 4 rows above, 3 and 7, then one of 5 and 9: the seventh and last kept
    model = _nms_model(max_out=7, iou=float(rng.uniform(0.3, 0.7)))
    v = Verifier(model, [Draw("planted ties", _feeds(rng, s))], atol=1e-4)
    return model, v


def _order_of(ref: dict[str, np.ndarray]) -> list[int]:
    return [int(i) for i in ref["selected"][:, 2]]


def _edited(v: Verifier, edit) -> dict[str, np.ndarray]:
    ref = {k: np.array(a) for k, a in v.references[0].items()}
    edit(ref)
    return ref


def _rows(ref: dict[str, np.ndarray], order: list[int]) -> None:
    """Re-lay 'selected' and 'dets' as the boxes ``order`` in that order (as a converter would)."""
    by_box = {int(i): (ref["selected"][r], ref["dets"][r]) for r, i in enumerate(ref["selected"][:, 2])}
    ref["selected"] = np.stack([by_box[i][0] for i in order]).astype(np.int64)
    ref["dets"] = np.stack([by_box[i][1] for i in order])


def test_selection_outputs_are_traced_from_the_graph(case):
    model, v = case
    traced = trace(model)
    assert sorted(traced) == ["dets", "selected"]  # 'area' does not depend on the selection
    assert [op.op_type for op in traced["dets"]] == ["NonMaxSuppression"]
    figs = v.check(lambda feeds: v.references[0], "identical")
    assert figs["dets"].rule == "selection" and figs["area"].rule == "elementwise"
    assert figs["dets"].as_dict()["rule"] == "selection" and figs["area"].as_dict()["rule"] == "elementwise"


def test_tied_rows_in_the_other_order_pass(case):
    _, v = case
    order = _order_of(v.references[0])
    assert order[4:6] == [3, 7]  # ONNX Runtime: the lower index first among exact ties
    swapped = order[:4] + [7, 3] + order[6:]
    got = _edited(v, lambda r: _rows(r, swapped))
    figs = v.check(lambda feeds: got, "tied rows swapped")
    assert figs["dets"].ok and figs["dets"].selection["permuted_rows"] == 2
    assert figs["selected"].ok and figs["selected"].selection["permuted_rows"] == 2


def test_the_other_tied_candidate_at_the_cut_passes(case):
    """Box 9 instead of box 5 (the same score, the seventh and last kept): in the indices and in
    the gathered rows, whose row for box 9 is written here from the inputs."""
    _, v = case
    order = _order_of(v.references[0])
    assert order[-1] == 5 and len(order) == 7
    feeds = v.draws[0].feeds
    row9 = np.concatenate([feeds["boxes"][0, 9], feeds["scores"][0, 0, [9]]])
    got = _edited(v, lambda r: r.update(selected=np.array([[0, 0, i] for i in order[:-1] + [9]], np.int64),
                                        dets=np.concatenate([r["dets"][:-1], row9[None]])))
    figs = v.check(lambda feeds: got, "other tied box")
    assert figs["selected"].ok and figs["selected"].selection["flipped_rows"] == 2
    assert figs["dets"].ok and figs["dets"].selection["flipped_rows"] == 2
    wrong = got["dets"].copy()
    wrong[-1, 0] += 0.01 * np.abs(wrong).max()  # box 9's score, but not box 9
    with pytest.raises(VerificationError, match="matches no row of the source nor any candidate"):
        v.check(lambda feeds: {**got, "dets": wrong}, "a wrong box with a tied score")


@pytest.mark.parametrize("wrong", ["rows with different scores swapped", "a detection missing", "a box moved",
                                   "an untied box kept at the cut"])
def test_a_wrong_candidate_fails(case, wrong):
    _, v = case
    order = _order_of(v.references[0])

    def edit(r):
        if wrong == "rows with different scores swapped":  # 0.95 and 0.9
            _rows(r, [order[1], order[0]] + order[2:])
        elif wrong == "a detection missing":
            r["selected"] = np.delete(r["selected"], 2, axis=0)
            r["dets"] = np.delete(r["dets"], 2, axis=0)
        elif wrong == "a box moved":
            r["dets"][3, 1] += 0.01 * np.abs(r["dets"]).max()
        else:  # box 11's score is far below the cut
            r["selected"] = np.concatenate([r["selected"][:-1], [[0, 0, 11]]]).astype(np.int64)

    got = _edited(v, edit)
    with pytest.raises(VerificationError) as e:
        v.check(lambda feeds: got, wrong)
    assert "selection rule" in str(e.value), str(e.value)
    expected = {"rows with different scores swapped": "other order", "a detection missing": "is missing",
                "a box moved": "", "an untied box kept at the cut": "score tolerance"}[wrong]
    assert expected in str(e.value), str(e.value)


def test_topk_indices_judged_by_their_values():
    """TopK's indices with a planted tie: the tied pair in the other order passes, another pair fails."""
    f = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["vals", "idx"], axis=1)], "topk",
                          [helper.make_tensor_value_info("x", f, [1, 10])],
                          [helper.make_tensor_value_info("vals", f, [1, 4]), helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 4])],
                          [helper.make_tensor("k", TensorProto.INT64, [1], [4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(3).uniform(-1, 0.5, (1, 10)).astype(np.float32)
    x[0, [2, 6]] = 0.9  # tied first place
    x[0, 4] = 0.8
    v = Verifier(model, [Draw("tie", {"x": x})], atol=1e-4)
    idx = v.references[0]["idx"]
    assert list(idx[0, :3]) == [2, 6, 4]
    ok = v.check(lambda feeds: {"vals": v.references[0]["vals"], "idx": idx[:, [1, 0, 2, 3]]}, "tie swapped")
    assert ok["idx"].rule == "selection" and ok["idx"].selection["permuted_rows"] == 2
    with pytest.raises(VerificationError, match="other order"):
        v.check(lambda feeds: {"vals": v.references[0]["vals"], "idx": idx[:, [0, 2, 1, 3]]}, "untied swapped")
