"""Exact path-dependent TreeSHAP for XGBoost trees: the values `pred_contribs=True` returns,
~8x cheaper a row in batches (bench/RESULTS.md), so reason codes fit the single-row budget.

Why it is cheaper: for one leaf, TreeSHAP's value function depends on a row only through
which of the leaf path's distinct features the row agrees with (goes the path's way at every
split on that feature). So each feature's contribution from the leaf can be tabled, when the
model loads, for every pattern of agreements along the path (the idea of FastTreeSHAP v2,
Yang 2021). Scoring a row is then one pass over the nodes, parents first, that builds each
node's agreement bits from its parent's, and one table read per (leaf, path feature):
O(nodes + leaves * depth) against XGBoost's O(leaves * depth^2) polynomial bookkeeping.

The pass over the nodes also finds the one leaf per tree whose path the row takes at every
step, so `explain` returns the row's margin too (summed in float32, tree by tree, as
XGBoost's predictor sums it), and `margins` walks the same flattened trees root to leaf for
rows that need no contributions. Batches of BLOCK_FROM rows or more go through a block
kernel (serving/treeshap_kernels.py) that gives the same bits ~2.5x cheaper a row.

The tables cost sum(d * 2^depth) float32s over the leaves (6.7 MB for the champion's 253
depth-6 trees), so a model with longer paths (depth > MAX_PATH), categorical splits, vector
leaves or more than one output gets None from `TreeShap.from_booster`: callers fall back to
XGBoost's own.

Math, per leaf with value v, path features U (|U| = d), z_j = product of cover ratios of the
path's splits on j, o_j = 1 if the row agrees with all of them: the value of a coalition S is
v * prod_{j in S} o_j * prod_{j not in S} z_j, and feature k's Shapley value is
v (o_k - z_k) * sum_{S subset of A} w(|S|, d) prod_{j in U-k-S} z_j, with A = {j != k: o_j = 1}
and w(s, d) = s! (d-s-1)! / d!. The sum depends on the pattern only, which is what is tabled.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

MAX_PATH = 10  # splits from root to leaf: at most 10 * 2^10 floats a leaf
BLOCK_FROM = 8  # rows from which the leaf-major block kernel beats the per-row one


@dataclass(frozen=True)
class TreeShap:
    """Flattened trees plus the per-leaf tables; `contributions(feats)` is the entry point.
    Nodes of all trees share one index space in breadth-first order (parents first)."""

    n_features: int
    bias: float  # the last column of pred_contribs: base margin + each tree's expected value
    node_feature: np.ndarray  # int32, -1 for a leaf
    node_threshold: np.ndarray  # float32: XGBoost compares float32(x) < threshold
    node_default_left: np.ndarray  # bool: where a missing value goes
    node_parent: np.ndarray  # int32, -1 for a root
    node_is_left: np.ndarray  # bool: the node is its parent's left child
    leaf_node: np.ndarray  # int32
    leaf_d: np.ndarray  # int64: distinct features on the leaf's path
    slot_feature: np.ndarray  # int32 (n_leaves, width): each leaf's path features, padded up
    # to the model's widest leaf with n_features, the bias column (overwritten at the end)
    leaf_table: np.ndarray  # int64 offsets into table (n_leaves + 1)
    table: np.ndarray  # float32, per leaf [agreement bits along the path][slot]
    leaf_value: np.ndarray  # float32
    leaf_full: np.ndarray  # int64: the bits of a row that takes every step of the path
    node_left: np.ndarray  # int32: the left child (the right one is next), -1 for a leaf
    tree_root: np.ndarray  # int32
    base_margin: float = 0.0  # XGBoost's margin before any tree (its transform of base_score)

    @classmethod
    def from_booster(cls, booster: xgb.Booster) -> TreeShap | None:
        model = json.loads(booster.save_raw("json"))["learner"]
        params, gbm = model["learner_model_param"], model["gradient_booster"]
        trees = gbm["model"]["trees"]
        scalar = int(params.get("num_target", 1)) == 1 and int(params.get("num_class", 0)) <= 1
        vector_leaves = any(int(t["tree_param"].get("size_leaf_vector", 1)) > 1 for t in trees)
        categorical = any(any(t["split_type"]) for t in trees)
        if gbm.get("name") != "gbtree" or not scalar or vector_leaves or categorical:
            return None
        n_features = int(params["num_feature"])
        built = _flatten(trees, n_features)
        if built is None:
            return None
        # XGBoost's bias column: base margin plus every tree's cover-weighted mean, and its
        # base margin: both the same for every row, so take them from XGBoost on one row
        probe = np.full((1, n_features), np.nan)
        dm = xgb.DMatrix(probe, nthread=1)
        bias = float(booster.predict(dm, pred_contribs=True, validate_features=False)[0, -1])
        margin = float(booster.predict(dm, output_margin=True, validate_features=False)[0])
        shap = cls(n_features=n_features, bias=bias, **built)
        trees_only = float(shap.explain(probe)[1][0])
        return dataclasses.replace(shap, base_margin=margin - trees_only)

    def contributions(self, feats: np.ndarray) -> np.ndarray:
        """(rows, n_features + 1) like pred_contribs: the last column is the bias."""
        return self.explain(feats)[0]

    def explain(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contributions as `contributions` gives them, and each row's margin (float32,
        summed as XGBoost's predictor sums it) from the same pass over the nodes: a row
        explained needs no second walk of the trees to be scored."""
        x = np.ascontiguousarray(feats, dtype=np.float64)
        out = np.empty((x.shape[0], self.n_features + 1), dtype=np.float32)
        margin = np.empty(x.shape[0], dtype=np.float32)
        from serving.treeshap_kernels import block_kernel, kernel  # numba: in the worker only

        pick = block_kernel if x.shape[0] >= BLOCK_FROM else kernel
        pick(self.slot_feature.shape[1])(
            x, self.node_feature, self.node_threshold, self.node_default_left, self.node_parent,
            self.node_is_left, self.leaf_node, self.leaf_d, self.slot_feature, self.leaf_table, self.table, out,
            self.leaf_value, self.leaf_full, np.float32(self.base_margin), margin)  # fmt: skip
        out[:, -1] = self.bias
        return out, margin

    def margins(self, feats: np.ndarray) -> np.ndarray:
        """Each row's margin alone, by walking each tree from its root to the row's leaf: the
        same float32 sums as `explain`'s, at ~11 µs a row (vs ~130 µs with contributions)."""
        x = np.ascontiguousarray(feats, dtype=np.float64)
        margin = np.empty(x.shape[0], dtype=np.float32)
        from serving.treeshap_kernels import margins

        margins(x, self.node_feature, self.node_threshold, self.node_default_left, self.node_left,
                self.tree_root, np.float32(self.base_margin), margin)  # fmt: skip
        return margin


def _flatten(trees: list[dict], n_features: int) -> dict[str, np.ndarray] | None:
    """All trees' nodes in one breadth-first index space; per leaf its path features, their
    cover ratios, and its table."""
    nodes: dict[str, list] = {
        "feature": [],
        "threshold": [],
        "default_left": [],
        "parent": [],
        "is_left": [],
        "left": [],
    }
    leaf_node, leaf_d, leaf_value, leaf_steps_n, z_all, steps_all = [], [], [], [], [], []
    leaf_slots, slot_feature, leaf_steps = [0], [], [0]
    for tree in trees:
        left, right = tree["left_children"], tree["right_children"]
        split, cond, cover = tree["split_indices"], tree["split_conditions"], tree["sum_hessian"]
        base = len(nodes["feature"])
        order, where, path_to = [0], {0: base}, {0: []}
        for node in order:  # breadth-first: grows while iterated
            if left[node] != -1:
                for child, goes_left in ((left[node], True), (right[node], False)):
                    where[child] = base + len(order)
                    path_to[child] = [*path_to[node], (node, goes_left)]
                    order.append(child)
        for node in order:
            leaf = left[node] == -1
            path = path_to[node]
            nodes["feature"].append(-1 if leaf else split[node])
            nodes["threshold"].append(cond[node])  # for a leaf, XGBoost keeps its value here
            nodes["default_left"].append(bool(tree["default_left"][node]))
            nodes["parent"].append(where[path[-1][0]] if path else -1)
            nodes["is_left"].append(bool(path and path[-1][1]))
            # breadth-first: a node's children are appended one after the other
            nodes["left"].append(-1 if leaf else where[left[node]])
            if not leaf:
                continue
            if len(path) > MAX_PATH:
                return None
            slots: dict[int, int] = {}
            z: list[float] = []
            for parent, goes_left in path:
                child = left[parent] if goes_left else right[parent]
                k = slots.setdefault(split[parent], len(slots))
                ratio = cover[child] / cover[parent]
                if k == len(z):
                    z.append(ratio)
                else:
                    z[k] *= ratio  # the same feature again: its fractions multiply
                steps_all.append(k)
            leaf_node.append(where[node])
            leaf_d.append(len(slots))
            leaf_value.append(cond[node])
            leaf_steps_n.append(len(path))
            slot_feature += list(slots)
            leaf_slots.append(len(slot_feature))
            leaf_steps.append(len(steps_all))
            z_all += z
    d = np.array(leaf_d, dtype=np.int32)
    width = max(int(d.max()), 1)
    steps_at = np.array(leaf_steps, dtype=np.int64)
    slots_at = np.array(leaf_slots, dtype=np.int64)
    padded = np.full((len(d), width), n_features, dtype=np.int32)
    for leaf, (start, end) in enumerate(itertools.pairwise(leaf_slots)):
        padded[leaf, : end - start] = slot_feature[start:end]
    leaf_table = np.concatenate([[0], np.cumsum(d.astype(np.int64) << np.diff(steps_at))])
    # a padded slot reads past its leaf's entry into the bias column: pad the last entry too
    table = np.zeros(int(leaf_table[-1]) + width, dtype=np.float32)
    from serving.treeshap_kernels import fill_tables

    fill_tables(d, np.array(leaf_value, dtype=np.float64), np.array(z_all, dtype=np.float64),
                 slots_at, np.array(steps_all, dtype=np.int32), steps_at, leaf_table,
                 _shapley_weights(MAX_PATH), table)  # fmt: skip
    return {
        "node_feature": np.array(nodes["feature"], dtype=np.int32),
        "node_threshold": np.array(nodes["threshold"], dtype=np.float32),
        "node_default_left": np.array(nodes["default_left"], dtype=np.bool_),
        "node_parent": np.array(nodes["parent"], dtype=np.int32),
        "node_is_left": np.array(nodes["is_left"], dtype=np.bool_),
        "leaf_node": np.array(leaf_node, dtype=np.int32),
        "leaf_d": d.astype(np.int64),
        "slot_feature": padded,
        "leaf_table": leaf_table,
        "table": table,
        "leaf_value": np.array(leaf_value, dtype=np.float32),
        "leaf_full": (np.int64(1) << np.array(leaf_steps_n, dtype=np.int64)) - 1,
        "node_left": np.array(nodes["left"], dtype=np.int32),
        "tree_root": np.flatnonzero(np.array(nodes["parent"]) < 0).astype(np.int32),
    }


def _shapley_weights(max_d: int) -> np.ndarray:
    """w[d, s] = s! (d-s-1)! / d!: the weight of a coalition of s of the other d-1 features."""
    w = np.zeros((max_d + 1, max_d + 1))
    for d in range(1, max_d + 1):
        for s in range(d):
            w[d, s] = math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
    return w
