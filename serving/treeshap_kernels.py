"""The compiled halves of serving/treeshap.py (numba), in their own module so that importing
the service (BentoML's parent process imports it too) does not load numba and LLVM: only a
worker that builds tables does. The math is in serving/treeshap.py's docstring."""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from serving.treeshap import MAX_PATH


@njit(cache=True)
def fill_tables(leaf_d, leaf_value, z_all, leaf_slots, steps_all, leaf_steps, leaf_table, w,
                 table):  # pragma: no cover  # fmt: skip
    e = np.zeros(MAX_PATH + 1)
    for leaf in range(leaf_d.shape[0]):
        d = leaf_d[leaf]
        z = z_all[leaf_slots[leaf] : leaf_slots[leaf] + d]
        steps = steps_all[leaf_steps[leaf] : leaf_steps[leaf + 1]]
        n_steps = steps.shape[0]
        for bits in range(1 << n_steps):  # bit n_steps-1-i: the row agrees at step i
            pattern = (1 << d) - 1  # a feature agrees when all its steps do
            for i in range(n_steps):
                if not (bits >> (n_steps - 1 - i)) & 1:
                    pattern &= ~(1 << steps[i])
            at = leaf_table[leaf] + bits * d
            for k in range(d):
                # elementary symmetric polynomials e_m of z over A (agreeing features but k);
                # the features of U-k outside A are absent from every S: their z multiply in
                e[:] = 0.0
                e[0] = 1.0
                size, absent = 0, 1.0
                for j in range(d):
                    if j == k:
                        continue
                    if (pattern >> j) & 1:
                        size += 1
                        for m in range(size, 0, -1):
                            e[m] += e[m - 1] * z[j]
                    else:
                        absent *= z[j]
                total = 0.0
                for s in range(size + 1):  # |S| = s: the other size - s members are absent
                    total += w[d, s] * e[size - s]
                o_k = (pattern >> k) & 1
                table[at + k] = leaf_value[leaf] * (o_k - z[k]) * absent * total


@functools.cache
def kernel(width: int):
    """The per-row kernel for leaves `width` slots wide: a closure, so numba sees the slot
    loop's length as a constant and unrolls it (~30% faster than a loop of unknown length)."""

    @njit(nogil=True)
    def contributions(x, node_feature, node_threshold, node_default_left, node_parent,
                      node_is_left, leaf_node, leaf_d, slot_feature, leaf_table, table, out,
                      leaf_value, leaf_full, base_margin, margin):  # pragma: no cover  # fmt: skip
        n_nodes = node_feature.shape[0]
        goes_left = np.zeros(n_nodes, dtype=np.bool_)
        bits = np.zeros(n_nodes, dtype=np.int64)  # agreement bits along the path to each node
        acc = np.zeros(out.shape[1], dtype=np.float32)
        for r in range(x.shape[0]):
            for n in range(n_nodes):
                p = node_parent[n]
                if p >= 0:
                    bits[n] = (bits[p] << 1) | (goes_left[p] == node_is_left[n])
                f = node_feature[n]
                if f >= 0:
                    value = x[r, f]
                    if np.isnan(value):
                        goes_left[n] = node_default_left[n]
                    else:
                        goes_left[n] = np.float32(value) < node_threshold[n]
            acc[:] = 0.0
            # the leaf the row reaches agrees with every step of its path: its value goes
            # into the margin, summed from the base in tree order in float32 as XGBoost does
            m = base_margin
            for leaf in range(leaf_node.shape[0]):
                b = bits[leaf_node[leaf]]
                if b == leaf_full[leaf]:
                    m += leaf_value[leaf]
                at = leaf_table[leaf] + b * leaf_d[leaf]
                for k in range(width):
                    acc[slot_feature[leaf, k]] += table[at + k]
            out[r] = acc
            margin[r] = m

    return contributions


BLOCK = 64  # rows a block kernel pass carries: its per-node state is n_nodes * BLOCK * 3 bytes


@functools.cache
def block_kernel(width: int):
    """The same numbers as `kernel` (bit for bit: each row's sums run in the same order) for
    batches, BLOCK rows at a time and leaf-major: each leaf's table is read once for the
    whole block while it sits in cache, where the per-row kernel reads every leaf's table
    again for every row; and the node pass runs over contiguous rows, branch-free, so it
    vectorizes. ~2.5x cheaper a row from 16 rows up; slower below ~4 rows."""

    @njit(nogil=True)
    def contributions(x, node_feature, node_threshold, node_default_left, node_parent,
                      node_is_left, leaf_node, leaf_d, slot_feature, leaf_table, table, out,
                      leaf_value, leaf_full, base_margin, margin):  # pragma: no cover  # fmt: skip
        n_nodes, rows = node_feature.shape[0], min(BLOCK, x.shape[0])
        xt = np.empty((x.shape[1], rows), dtype=np.float32)  # the block's rows as columns
        goes_left = np.zeros((n_nodes, rows), dtype=np.bool_)
        bits = np.zeros((n_nodes, rows), dtype=np.int16)  # paths are at most MAX_PATH long
        acc = np.zeros((out.shape[1], rows), dtype=np.float32)
        m = np.empty(rows, dtype=np.float32)
        at = np.empty(rows, dtype=np.int64)
        for start in range(0, x.shape[0], rows):
            nb = min(rows, x.shape[0] - start)
            for j in range(nb):
                for f in range(x.shape[1]):
                    xt[f, j] = np.float32(x[start + j, f])
            for n in range(n_nodes):
                p = node_parent[n]
                if p >= 0:
                    is_left = node_is_left[n]
                    for j in range(nb):
                        bits[n, j] = (bits[p, j] << 1) | (goes_left[p, j] == is_left)
                f = node_feature[n]
                if f >= 0:
                    threshold, default_left = node_threshold[n], node_default_left[n]
                    for j in range(nb):
                        v = xt[f, j]  # NaN compares False: it goes the default way
                        goes_left[n, j] = (v < threshold) | (default_left & (v != v))
            acc[:, :nb] = 0.0
            m[:nb] = base_margin
            for leaf in range(leaf_node.shape[0]):
                node = leaf_node[leaf]
                for j in range(nb):
                    b = bits[node, j]
                    if b == leaf_full[leaf]:
                        m[j] += leaf_value[leaf]
                    at[j] = leaf_table[leaf] + b * leaf_d[leaf]
                for k in range(width):
                    f = slot_feature[leaf, k]
                    for j in range(nb):
                        acc[f, j] += table[at[j] + k]
            for j in range(nb):
                out[start + j] = acc[:, j]
                margin[start + j] = m[j]

    return contributions


@njit(nogil=True)
def margins(x, node_feature, node_threshold, node_default_left, node_left, tree_root,
            base_margin, out):  # pragma: no cover  # fmt: skip
    """Each row's margin: base plus, tree by tree, the value of the leaf the row reaches (a
    leaf keeps its value in node_threshold), in float32 like the contribution kernels."""
    for r in range(x.shape[0]):
        m = base_margin
        for t in range(tree_root.shape[0]):
            n = tree_root[t]
            while node_feature[n] >= 0:
                v = np.float32(x[r, node_feature[n]])  # NaN compares False: the default way
                goes_left = (v < node_threshold[n]) | (node_default_left[n] & (v != v))
                n = node_left[n] if goes_left else node_left[n] + 1
            m += node_threshold[n]
        out[r] = m
