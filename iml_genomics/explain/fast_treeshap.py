"""Exact Tree SHAP compiled with numba, linear in the tree depth per node, parallel over rows with threads.

Both value functions of Tree SHAP (path-dependent and interventional) are, for one leaf ``l`` reached through the
unique features ``j`` of its path, a product game ``v_l prod_{j in S} o_j prod_{j not in S} z_j``: ``o_j`` is 1 when
the explained row follows every split on feature ``j`` along the path and 0 otherwise, ``z_j`` is the product of the
path's cover ratios for ``j`` (path-dependent) or the same indicator for a background row (interventional). The
Shapley value of feature ``i`` in such a game is a Beta integral (Yu et al. 2022, "Linear TreeShap"),

    phi_i = v_l (o_i - z_i) * int_0^1 prod_{j != i} (z_j (1 - t) + o_j t) dt,

the integral of a polynomial of degree below the tree depth ``D``. Path-dependent: computed exactly by
Gauss-Legendre quadrature on ``K = ceil(D / 2)`` nodes (per tree; exact to degree 2K - 1 >= D - 1). One depth-first walk per tree carries the product
``P(t)`` down (one multiplication per edge, one division when a feature repeats) and the leaf sums
``H(t) = sum_l v_l P_l(t)`` up; every edge on feature ``i`` integrates its subtree's sum against its own factor and
takes it out of the enclosing ``i``-edge's integral again. Each node costs ``O(K)``, so a row costs ``O(T N D)`` over
``T`` trees of ``N`` nodes where shap's recursion costs ``O(T L D^2)``. Interventional: every factor is t, 1 - t or 1,
so a leaf's integral is a Beta function of two counts. A row enters a leaf's game only through the bit mask of the
leaf's path features it follows on every split, so the background is summarised once, per leaf, as its distinct
masks with counts; an explained row then costs one walk per tree plus, per leaf, a loop over those masks
(``O(T (N + sum_l m_l u_l))`` for m_l distinct masks of u_l features, at most the background size) instead of one
walk per (row, background row, tree). Leaves with more than 63 path features (64-bit masks) keep that pair walk.

Trees with one output column (regression, boosting, one class of a forest) run the path-dependent walk in
kernels specialised on the quadrature node count K (:mod:`iml_genomics.explain._fts_kernels`, generated), so the
loops over the K nodes are unrolled; a binary class-probability forest computes class 1 only and negates it for
class 0 (the two games add up to a constant, whose Shapley values are zero).

Blocks of rows run in Python threads over the compiled (GIL-free) kernels; each row is computed by one thread in a
fixed tree order, so the values are the same bytes whatever the thread count. :class:`FastTreeExplainer` reads the fitted scikit-learn models of the registry
(random forest, extra trees, CART, gradient boosting, histogram gradient boosting) into flat node arrays the way
``shap.TreeExplainer`` reads them (same leaf values, covers, output scale and input dtype), so its values equal
shap's up to float rounding (tests/test_fast_treeshap.py).
"""

from __future__ import annotations

import numpy as np

try:  # numba ships with shap (a project dependency)
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - the engine then reports itself unsupported
    numba = None



def _families():
    """(forests, single trees, gradient boosting, histogram gradient boosting): the exact classes read.

    Exact types, not subclasses: a subclass may change how it predicts. Classes, not names, so the registry
    stays the one place that names models (tests/test_model_kinds.py).
    """
    from sklearn import ensemble, tree

    return ((ensemble.RandomForestClassifier, ensemble.RandomForestRegressor, ensemble.ExtraTreesClassifier,
             ensemble.ExtraTreesRegressor), (tree.DecisionTreeClassifier, tree.DecisionTreeRegressor),
            (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor),
            (ensemble.HistGradientBoostingClassifier, ensemble.HistGradientBoostingRegressor))


#: the background summary is built while its distinct masks (plus nodes) stay under this many per background row
#: and tree depth level (background rows x sum of tree depths), and under _SUMMARY_MAX_MASKS in all (its memory).
#: Measured (CPU, one thread) on the single-cell config, a random forest of 100 trees, depth 8, min_samples_leaf
#: 20, grown on 20,000 simulated cells, 100 background rows: 987,000 entries (12.3 per row and level), 12.5 ms per
#: explained row over the summary, 30.7 ms by the pair walk, 23.9 ms by shap's interventional TreeExplainer (what
#: explain falls back to): the summary breaks even with shap near 23 per row and level; 16 keeps a 1.4x margin.
_SUMMARY_CHECKS_PER_VISIT = 16
_SUMMARY_MAX_MASKS = 2 ** 25


class UnsupportedModel(ValueError):
    """The model is outside what the compiled engine reads; callers fall back to shap's TreeExplainer."""


# ---------------------------------------------------------------------------
# compiled kernels
# ---------------------------------------------------------------------------

if numba is not None:
    @njit(cache=True, nogil=True, error_model="numpy")
    def _walk(x, root, out_off, left, right, feature, threshold, missing_left, value, cover,
              tn, tw, tw0, z, o, seen, node_s, state, efeat, sz, so, sseen, xleft, P, H, phi):
        """Add one tree's path-dependent attributions of row ``x`` to ``phi``.

        ``z``, ``o``, ``seen`` are per-feature scratch arrays that the walk leaves as it found them (zeros); the
        ``*_s`` arrays and ``P``, ``H`` are per-depth stacks.
        """
        K = tn.shape[0]
        V = value.shape[1]
        if left[root] < 0:
            return
        d = 0
        node_s[0] = root
        state[0] = 0
        for k in range(K):
            P[0, k] = 1.0
            for v in range(V):
                H[0, v, k] = 0.0
        while True:
            n = node_s[d]
            if left[n] >= 0 and state[d] < 2:
                is_left = state[d] == 0
                state[d] += 1
                c = left[n] if is_left else right[n]
                f = feature[n]
                if is_left:  # where the row goes at this node, read once for both children
                    xv = x[f]
                    xleft[d] = (missing_left[n] == 1) if np.isnan(xv) else xv <= threshold[n]
                hx = 1.0 if xleft[d] == is_left else 0.0
                r = cover[c]  # the child's share of its parent's cover (precomputed)
                if seen[f]:
                    zn = z[f] * r
                    on = o[f] * hx
                else:
                    zn = r
                    on = hx
                if left[c] < 0:
                    # a leaf child is finished here, without a push: its polynomial is P * factor (/ the previous
                    # factor of f), and its integrand P_leaf / factor needs no division unless f repeats
                    c1 = on - zn
                    c0 = (o[f] - z[f]) if seen[f] else 0.0
                    s1 = 0.0
                    s0 = 0.0
                    if seen[f]:
                        zp = z[f]
                        op = o[f]
                        for k in range(K):
                            t = tn[k]
                            prev = zp * (1.0 - t) + op * t
                            base = P[d, k] / prev
                            pc = base * (zn * (1.0 - t) + on * t)
                            s0 += tw[k] * pc / prev
                            s1 += tw[k] * base
                            for v in range(V):
                                H[d, v, k] += value[c, v] * pc
                    else:
                        for k in range(K):
                            t = tn[k]
                            base = P[d, k]
                            pc = base * (zn * (1.0 - t) + on * t)
                            s1 += tw[k] * base
                            for v in range(V):
                                H[d, v, k] += value[c, v] * pc
                    g = c1 * s1 - c0 * s0
                    for v in range(V):
                        phi[f, out_off + v] += value[c, v] * g
                    continue
                dd = d + 1
                node_s[dd] = c
                state[dd] = 0
                efeat[dd] = f
                sz[dd] = z[f]
                so[dd] = o[f]
                sseen[dd] = seen[f]
                if seen[f]:
                    zp = z[f]
                    op = o[f]
                    for k in range(K):
                        t = tn[k]
                        P[dd, k] = P[d, k] * (zn * (1.0 - t) + on * t) / (zp * (1.0 - t) + op * t)
                else:
                    for k in range(K):
                        t = tn[k]
                        P[dd, k] = P[d, k] * (zn * (1.0 - t) + on * t)
                for v in range(V):
                    for k in range(K):
                        H[dd, v, k] = 0.0
                z[f] = zn
                o[f] = on
                seen[f] = 1
                d = dd
            else:
                if left[n] < 0:
                    for v in range(V):
                        val = value[n, v]
                        for k in range(K):
                            H[d, v, k] = val * P[d, k]
                if d == 0:
                    break
                f = efeat[d]
                zn = z[f]
                on = o[f]
                zp = sz[d]
                op = so[d]
                # this edge's leaves carry the factor (zn, on) of feature f. An enclosing edge on f (factor
                # (zp, op)) integrates its whole subtree, this one included, against its own factor: the second
                # term takes this subtree out of it again. Both integrals use the same quadrature nodes, so their
                # difference is the (exact) quadrature of the enclosing edge's remaining polynomial.
                c1 = on - zn
                c0 = op - zp if sseen[d] else 0.0
                for v in range(V):
                    s1 = 0.0
                    if on == 0.0:
                        for k in range(K):
                            s1 += tw0[k] * H[d, v, k]
                        s1 /= zn
                    else:
                        for k in range(K):
                            s1 += tw[k] * H[d, v, k] / (zn * (1.0 - tn[k]) + on * tn[k])
                    s0 = 0.0
                    if c0 != 0.0:
                        if op == 0.0:
                            for k in range(K):
                                s0 += tw0[k] * H[d, v, k]
                            s0 /= zp
                        else:
                            for k in range(K):
                                s0 += tw[k] * H[d, v, k] / (zp * (1.0 - tn[k]) + op * tn[k])
                    phi[f, out_off + v] += c1 * s1 - c0 * s0
                z[f] = zp
                o[f] = op
                seen[f] = sseen[d]
                for v in range(V):
                    for k in range(K):
                        H[d - 1, v, k] += H[d, v, k]
                d -= 1

    @njit(cache=True, nogil=True, error_model="numpy")
    def _walk_pair(x, b, root, out_off, left, right, feature, threshold, missing_left, value, beta, o, z, seen,
                   lastd, node_s, state, efeat, sz, so, sseen, slast, na, nc, phi):
        """Interventional Tree SHAP of row ``x`` against one background row ``b`` in one tree, added to ``phi``.

        With a background row every factor of the product game is t (only x follows feature j's splits), 1 - t
        (only b does) or 1 (both), so a leaf's polynomial is t^a (1 - t)^c and its Shapley values are Beta
        integrals ``beta[a, c] = a! c! / (a + c + 1)!``: each of the a features only x satisfies gets
        ``v beta[a-1, c]``, each of the c only b satisfies ``-v beta[a, c-1]``. The walk visits only nodes x or b
        reaches, so a pair costs the union of their paths plus O(depth) per leaf both reach together.
        """
        V = value.shape[1]
        if left[root] < 0:
            return
        d = 0
        node_s[0] = root
        state[0] = 0
        na[0] = 0
        nc[0] = 0
        while True:
            n = node_s[d]
            if left[n] >= 0 and state[d] < 2:
                is_left = state[d] == 0
                state[d] += 1
                c = left[n] if is_left else right[n]
                f = feature[n]
                xv = x[f]
                gx = (missing_left[n] == 1) if np.isnan(xv) else xv <= threshold[n]
                bv = b[f]
                gb = (missing_left[n] == 1) if np.isnan(bv) else bv <= threshold[n]
                hx = 1.0 if gx == is_left else 0.0
                hb = 1.0 if gb == is_left else 0.0
                if seen[f]:
                    on = o[f] * hx
                    zn = z[f] * hb
                else:
                    on = hx
                    zn = hb
                if on == 0.0 and zn == 0.0:
                    continue
                a = na[d]
                cc = nc[d]
                if seen[f]:  # take f's previous state out of the counts
                    if o[f] == 1.0 and z[f] == 0.0:
                        a -= 1
                    elif o[f] == 0.0 and z[f] == 1.0:
                        cc -= 1
                if on == 1.0 and zn == 0.0:
                    a += 1
                elif on == 0.0 and zn == 1.0:
                    cc += 1
                dd = d + 1
                node_s[dd] = c
                state[dd] = 0
                efeat[dd] = f
                sz[dd] = z[f]
                so[dd] = o[f]
                sseen[dd] = seen[f]
                slast[dd] = lastd[f]
                na[dd] = a
                nc[dd] = cc
                z[f] = zn
                o[f] = on
                seen[f] = 1
                lastd[f] = dd
                d = dd
            else:
                if left[n] < 0 and d > 0:
                    a = na[d]
                    cc = nc[d]
                    if a > 0 or cc > 0:
                        wa = beta[a - 1, cc] if a > 0 else 0.0
                        wc = beta[a, cc - 1] if cc > 0 else 0.0
                        for j in range(1, d + 1):
                            f = efeat[j]
                            if lastd[f] != j:
                                continue  # a repeated feature counts once, in its deepest state
                            if o[f] == 1.0 and z[f] == 0.0:
                                for v in range(V):
                                    phi[f, out_off + v] += value[n, v] * wa
                            elif o[f] == 0.0 and z[f] == 1.0:
                                for v in range(V):
                                    phi[f, out_off + v] -= value[n, v] * wc
                if d == 0:
                    break
                f = efeat[d]
                z[f] = sz[d]
                o[f] = so[d]
                seen[f] = sseen[d]
                lastd[f] = slast[d]
                d -= 1

    @njit(cache=True, nogil=True, error_model="numpy")
    def _shap_rows_interventional(X, B, roots, out_off, left, right, feature, threshold, missing_left, value,
                                  beta, max_depth, phi_all):
        """Fill ``phi_all`` (n, p_used, n_out): interventional values of the rows of ``X`` averaged over ``B``."""
        n, p = X.shape
        D = max_depth + 2
        nb = B.shape[0]
        z = np.zeros(p)
        o = np.zeros(p)
        seen = np.zeros(p, dtype=np.uint8)
        lastd = np.zeros(p, dtype=np.int64)
        node_s = np.zeros(D, dtype=np.int64)
        state = np.zeros(D, dtype=np.int64)
        efeat = np.zeros(D, dtype=np.int64)
        sz = np.zeros(D)
        so = np.zeros(D)
        sseen = np.zeros(D, dtype=np.uint8)
        slast = np.zeros(D, dtype=np.int64)
        na = np.zeros(D, dtype=np.int64)
        nc = np.zeros(D, dtype=np.int64)
        for i in range(n):
            phi = phi_all[i]
            x = X[i]
            for j in range(nb):
                for ti in range(roots.shape[0]):
                    _walk_pair(x, B[j], roots[ti], out_off[ti], left, right, feature, threshold, missing_left,
                               value, beta, o, z, seen, lastd, node_s, state, efeat, sz, so, sseen, slast, na, nc,
                               phi)
            for f in range(p):
                for v in range(phi.shape[1]):
                    phi[f, v] /= nb

    # ---- interventional, shared over the background rows ------------------------------------------------------
    # A leaf's game depends on a row only through which of the leaf's path features it follows on every split
    # (a bit mask over the path's unique features, first occurrence first). The background rows enter only
    # through the counts of their masks per leaf, precomputed once; a row explained then costs one walk of
    # every tree (as path-dependent) plus, per leaf, a loop over the distinct background masks of that leaf.

    @njit(cache=True, nogil=True, error_model="numpy")
    def _path_bits(root, left, right, feature, max_depth, bitpos, leaf_u, leaf_fstart, flat, ptr):
        """Per node of one tree: ``bitpos`` (internal: the bit of its feature in its own path's mask), and
        per leaf ``leaf_u`` (unique features on its path) and ``flat[leaf_fstart[leaf]:][:u]`` (those features,
        first occurrence first), appended from ``flat[ptr]``; returns the new end of ``flat``."""
        D = max_depth + 2
        stack = np.zeros(2 * D + 2, dtype=np.int64)
        ulen = np.zeros(2 * D + 2, dtype=np.int64)
        dep = np.zeros(2 * D + 2, dtype=np.int64)
        cur = np.zeros(D + 1, dtype=np.int64)
        sp = 0
        stack[0] = root
        ulen[0] = 0
        dep[0] = 0
        sp = 1
        while sp > 0:
            sp -= 1
            n = stack[sp]
            ul = ulen[sp]
            d = dep[sp]
            if left[n] < 0:
                leaf_u[n] = ul
                leaf_fstart[n] = ptr
                for j in range(ul):
                    flat[ptr + j] = cur[j]
                ptr += ul
                continue
            f = feature[n]
            pos = -1
            for j in range(ul):
                if cur[j] == f:
                    pos = j
                    break
            nu = ul
            if pos < 0:
                pos = ul
                cur[ul] = f
                nu = ul + 1
            bitpos[n] = pos
            stack[sp] = right[n]
            ulen[sp] = nu
            dep[sp] = d + 1
            stack[sp + 1] = left[n]
            ulen[sp + 1] = nu
            dep[sp + 1] = d + 1
            sp += 2
        return ptr

    @njit(cache=True, nogil=True, error_model="numpy")
    def _leaf_masks(x, root, left, right, feature, threshold, missing_left, bitpos, max_depth, out):
        """``out[leaf]``: the path features (bits) that row ``x`` follows on every split of the leaf's path."""
        D = max_depth + 2
        stack = np.zeros(2 * D + 2, dtype=np.int64)
        mstack = np.zeros(2 * D + 2, dtype=np.uint64)
        stack[0] = root
        mstack[0] = np.uint64(0xFFFFFFFFFFFFFFFF)
        sp = 1
        while sp > 0:
            sp -= 1
            n = stack[sp]
            m = mstack[sp]
            if left[n] < 0:
                out[n] = m
                continue
            xv = x[feature[n]]
            gl = (missing_left[n] == 1) if np.isnan(xv) else xv <= threshold[n]
            off = m & ~(np.uint64(1) << np.uint64(bitpos[n]))
            stack[sp] = right[n]
            mstack[sp] = off if gl else m
            stack[sp + 1] = left[n]
            mstack[sp + 1] = m if gl else off
            sp += 2

    @njit(cache=True, nogil=True, error_model="numpy")
    def _shap_rows_interventional_shared(X, roots, out_off, left, right, feature, threshold, missing_left, value,
                                         bitpos, leaf_u, leaf_fstart, leaf_feats, mstart, masks, counts, beta, inv_nb,
                                         max_depth, phi_all):
        """Fill ``phi_all`` (n, p_used, n_out): interventional values of the rows of ``X`` over the background
        summarised by ``masks``/``counts`` (distinct background masks of leaf ``l`` in ``mstart[l]:mstart[l+1]``).

        At a leaf of value v with u unique path features, row x (mask mx) and a background mask m (count c_m)
        form a product game iff every feature is followed by x or by the background row (``m | mx`` full); then
        with a = |mx \\ m| features only x follows and c = |not mx| only the background row follows, each of the
        a gets ``+v c_m beta[a-1, c]`` and each of the c ``-v c_m beta[a, c-1]`` (Beta integrals of t^a (1-t)^c).
        """
        n = X.shape[0]
        V = value.shape[1]
        D = max_depth + 2
        stack = np.zeros(2 * D + 2, dtype=np.int64)
        mstack = np.zeros(2 * D + 2, dtype=np.uint64)
        w = np.zeros(D + 1)
        one = np.uint64(1)
        for i in range(n):
            phi = phi_all[i]
            x = X[i]
            for ti in range(roots.shape[0]):
                oo = out_off[ti]
                stack[0] = roots[ti]
                mstack[0] = np.uint64(0xFFFFFFFFFFFFFFFF)
                sp = 1
                while sp > 0:
                    sp -= 1
                    nd = stack[sp]
                    mx0 = mstack[sp]
                    if left[nd] >= 0:
                        xv = x[feature[nd]]
                        gl = (missing_left[nd] == 1) if np.isnan(xv) else xv <= threshold[nd]
                        off = mx0 & ~(one << np.uint64(bitpos[nd]))
                        stack[sp] = right[nd]
                        mstack[sp] = off if gl else mx0
                        stack[sp + 1] = left[nd]
                        mstack[sp + 1] = mx0 if gl else off
                        sp += 2
                        continue
                    u = leaf_u[nd]
                    if u == 0:
                        continue
                    full = (one << np.uint64(u)) - one
                    mx = mx0 & full
                    nz = full & ~mx
                    c = 0
                    t = nz
                    while t:
                        c += 1
                        t &= t - one
                    for j in range(u):
                        w[j] = 0.0
                    sz = 0.0
                    for q in range(mstart[nd], mstart[nd + 1]):
                        m = masks[q]
                        if (m | mx) != full:
                            continue  # a feature neither row follows: the coalition never reaches the leaf
                        nx = mx & ~m
                        a = 0
                        t = nx
                        while t:
                            a += 1
                            t &= t - one
                        cm = counts[q]
                        if c > 0:
                            sz += cm * beta[a, c - 1]
                        if a > 0:
                            wa = cm * beta[a - 1, c]
                            for j in range(u):
                                if (nx >> np.uint64(j)) & one:
                                    w[j] += wa
                    for j in range(u):
                        if (nz >> np.uint64(j)) & one:
                            g = -sz * inv_nb
                        else:
                            g = w[j] * inv_nb
                        if g != 0.0:
                            f = leaf_feats[leaf_fstart[nd] + j]
                            for v in range(V):
                                phi[f, oo + v] += value[nd, v] * g

    @njit(cache=True, nogil=True, error_model="numpy")
    def _leaf_sum(x, roots, out_off, left, right, feature, threshold, missing_left, value, n_out):
        """The sum of the leaf values row ``x`` reaches (the model's raw output without its offset)."""
        res = np.zeros(n_out)
        V = value.shape[1]
        for ti in range(roots.shape[0]):
            n = roots[ti]
            while left[n] >= 0:
                xv = x[feature[n]]
                go_left = missing_left[n] == 1 if np.isnan(xv) else xv <= threshold[n]
                n = left[n] if go_left else right[n]
            for v in range(V):
                res[out_off[ti] + v] += value[n, v]
        return res

    @njit(cache=True, nogil=True, error_model="numpy")
    def _shap_rows(X, roots, out_off, left, right, feature, threshold, missing_left, value, cover, tn, tw, tw0, kt,
                   max_depth, phi_all):
        """Fill ``phi_all`` (n, p_used, n_out) with the path-dependent values of the rows of ``X``.

        Compiled without the GIL: :func:`_run_blocks` runs blocks of rows in Python threads (no numba thread
        pool, which is neither fork-safe nor re-entrant under every threading layer).
        """
        n, p = X.shape
        K = tn.shape[1]
        V = value.shape[1]
        D = max_depth + 2
        z = np.zeros(p)
        o = np.zeros(p)
        seen = np.zeros(p, dtype=np.uint8)
        node_s = np.zeros(D, dtype=np.int64)
        state = np.zeros(D, dtype=np.int64)
        efeat = np.zeros(D, dtype=np.int64)
        sz = np.zeros(D)
        so = np.zeros(D)
        sseen = np.zeros(D, dtype=np.uint8)
        xleft = np.zeros(D, dtype=np.bool_)
        P = np.zeros((D, K))
        H = np.zeros((D, V, K))
        for i in range(n):
            phi = phi_all[i]
            x = X[i]
            for ti in range(roots.shape[0]):
                kk = kt[ti]
                _walk(x, roots[ti], out_off[ti], left, right, feature, threshold, missing_left, value, cover,
                      tn[ti, :kk], tw[ti, :kk], tw0[ti, :kk], z, o, seen, node_s, state, efeat, sz, so, sseen,
                      xleft, P, H, phi)

    @njit(cache=True, nogil=True, error_model="numpy")
    def _raw_rows(X, roots, out_off, left, right, feature, threshold, missing_left, value, out):
        for i in range(X.shape[0]):
            out[i] = _leaf_sum(X[i], roots, out_off, left, right, feature, threshold, missing_left, value,
                               out.shape[1])


def _run_blocks(kernel, n_rows: int, n_threads: int | None, make_args) -> None:
    """Run ``kernel(*make_args(start, stop))`` on contiguous row blocks in ``n_threads`` Python threads.

    Each row is computed whole by one call, so the values do not depend on the blocks or the threads.
    """
    threads = max(1, min(int(n_threads or 1), n_rows))
    if threads == 1:
        kernel(*make_args(0, n_rows))
        return
    from concurrent.futures import ThreadPoolExecutor

    # several blocks per thread: rows differ in cost (deep paths), so the last block should be short
    edges = np.linspace(0, n_rows, min(n_rows, 4 * threads) + 1).round().astype(int)
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(kernel, *make_args(s, e)) for s, e in zip(edges[:-1], edges[1:]) if e > s]:
            f.result()


# ---------------------------------------------------------------------------
# reading the models
# ---------------------------------------------------------------------------


class _Forest:
    """Trees appended into flat node arrays (global node ids), as shap.TreeExplainer would read them."""

    def __init__(self):
        self.left, self.right, self.feature, self.threshold, self.missing_left = [], [], [], [], []
        self.value, self.cover, self.roots, self.out_off, self.depth = [], [], [], [], []
        self.n_nodes = 0

    def add(self, left, right, feature, threshold, missing_left, value, cover, depth, out_off=0):
        left = np.asarray(left, dtype=np.int64)
        leaf = left < 0
        shift = lambda a: np.where(leaf, -1, np.asarray(a, dtype=np.int64) + self.n_nodes)  # noqa: E731
        self.left.append(shift(left))
        self.right.append(shift(right))
        self.feature.append(np.where(leaf, 0, np.asarray(feature, dtype=np.int64)))
        self.threshold.append(np.asarray(threshold, dtype=np.float64))
        self.missing_left.append(np.asarray(missing_left, dtype=np.uint8))
        self.value.append(np.asarray(value, dtype=np.float64).reshape(len(left), -1))
        self.cover.append(np.asarray(cover, dtype=np.float64))
        self.roots.append(self.n_nodes)
        self.out_off.append(out_off)
        self.depth.append(int(depth))
        self.n_nodes += len(left)

    def arrays(self):
        widths = {v.shape[1] for v in self.value}
        if len(widths) != 1:
            raise UnsupportedModel("trees of different output widths")
        return dict(left=np.concatenate(self.left), right=np.concatenate(self.right),
                    feature=np.concatenate(self.feature), threshold=np.concatenate(self.threshold),
                    missing_left=np.concatenate(self.missing_left), value=np.concatenate(self.value),
                    cover=np.concatenate(self.cover), roots=np.asarray(self.roots, dtype=np.int64),
                    out_off=np.asarray(self.out_off, dtype=np.int64)), max(self.depth, default=0)


def _add_sklearn_tree(forest, tree, scale, normalize, out_off=0):
    value = tree.value[:, :, :] if tree.value.ndim == 3 else tree.value
    value = value.reshape(tree.node_count, -1).astype(np.float64)
    if normalize:  # class fractions per node, as shap's SingleTree(normalize=True)
        value = value / value.sum(axis=1, keepdims=True)
    miss = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=np.uint8))
    forest.add(tree.children_left, tree.children_right, tree.feature, tree.threshold, miss, value * scale,
               tree.weighted_n_node_samples, tree.max_depth, out_off)


def _read_model(model):
    """(forest, base offset per output, input dtype, n_outputs) of a fitted registry tree model.

    Raises
    ------
    UnsupportedModel
        A model class or configuration the engine does not read (the caller then uses shap's TreeExplainer).
    """
    from sklearn.base import is_classifier

    forests, trees, boosting, hist = _families()
    cls = type(model)
    if cls not in forests + trees + boosting + hist:
        raise UnsupportedModel(f"{cls.__name__} is not read by the compiled Tree SHAP engine")
    forest = _Forest()
    classifier = is_classifier(model)
    if cls in forests or cls in trees:
        if getattr(model, "n_outputs_", 1) != 1:
            raise UnsupportedModel("multi-output trees")
        members = [e.tree_ for e in model.estimators_] if cls in forests else [model.tree_]
        for t in members:
            _add_sklearn_tree(forest, t, 1.0 / len(members), classifier)
        n_out = len(model.classes_) if classifier else 1
        return forest, np.zeros(n_out), np.float32, n_out
    if cls in boosting:
        from scipy.special import logit
        from sklearn.dummy import DummyClassifier, DummyRegressor

        est = model.estimators_
        if est.shape[1] != 1:
            # shap's TreeExplainer refuses multiclass gradient boosting: there is nothing to be equal to
            raise UnsupportedModel("multiclass gradient boosting")
        init = getattr(model, "init_", None)
        if not isinstance(init, DummyClassifier if classifier else DummyRegressor):
            raise UnsupportedModel(f"init model {type(init).__name__}")
        # the prior log-odds of classes[1] (shap's base_offset), or the constant of the regressor's init
        base = float(logit(init.class_prior_[1])) if classifier else float(np.ravel(init.constant_)[0])
        for e in est[:, 0]:
            _add_sklearn_tree(forest, e.tree_, float(model.learning_rate), False)
        return forest, np.array([base]), np.float32, 1
    # histogram gradient boosting: the predictors' node records (shap reads the same fields)
    baseline = np.ravel(np.asarray(model._baseline_prediction, dtype=np.float64))
    n_out = baseline.size
    for stage in model._predictors:
        for k, pred in enumerate(stage):
            nodes = pred.nodes
            if np.any(nodes["is_categorical"][nodes["is_leaf"] == 0]):
                raise UnsupportedModel("categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            forest.add(np.where(leaf, -1, nodes["left"].astype(np.int64)),
                       np.where(leaf, -1, nodes["right"].astype(np.int64)), nodes["feature_idx"],
                       nodes["num_threshold"], nodes["missing_go_to_left"], nodes["value"][:, None],
                       nodes["count"], nodes["depth"].max(), out_off=k)
    return forest, baseline, np.float64, n_out


def _complementary(a) -> bool:
    """True when, in every tree, the two outputs of every leaf add up to one constant (class probabilities)."""
    leaf = a["left"] < 0
    total = a["value"].sum(axis=1)
    tree_of = np.searchsorted(a["roots"], np.arange(a["left"].size), side="right") - 1
    const = np.zeros(a["roots"].size)
    const[tree_of[leaf][::-1]] = total[leaf][::-1]  # one leaf's sum per tree (the first leaf)
    # relative 1e-12: the leaf fractions are a / (a + b) and b / (a + b), whose float sum may be 1 - 2^-53
    return bool(np.all(np.abs(total[leaf] - const[tree_of[leaf]]) <= 1e-12 * np.abs(const[tree_of[leaf]])))


def _gauss_legendre(depths):
    """Per tree: Gauss-Legendre nodes and weights on [0, 1], exact for the degree (< depth) of its integrands.

    Returns (nodes, weights, weights / (1 - nodes), count) with one zero-padded row per tree.
    """
    # a leaf's integrand has degree below the number of unique features on its path (<= D): K points are exact
    # up to degree 2K - 1, so ceil(D / 2) suffice (one node fewer than D // 2 + 1 at even depths)
    counts = np.maximum(1, (np.asarray(depths, dtype=np.int64) + 1) // 2)
    kmax = int(counts.max()) if counts.size else 1
    tn, tw = np.zeros((counts.size, kmax)), np.zeros((counts.size, kmax))
    for k in np.unique(counts):
        x, w = np.polynomial.legendre.leggauss(int(k))
        tn[counts == k, :k] = (x + 1.0) / 2.0
        tw[counts == k, :k] = w / 2.0
    return tn, tw, tw / (1.0 - tn), counts


class FastTreeExplainer:
    """Exact Tree SHAP of a fitted scikit-learn tree model, compiled and threaded.

    Parameters
    ----------
    model : fitted estimator
        A fitted random forest, extra trees, decision tree, gradient boosting or histogram gradient boosting
        model of scikit-learn (exact class).
    data : array, optional
        Background rows for ``feature_perturbation='interventional'``.
    feature_perturbation : {'tree_path_dependent', 'interventional'}
    n_threads : int, optional
        Threads over the rows (None = 1); the values do not depend on it.
    output_columns : list of int, optional
        Explain only these outputs (for example the positive class of a binary forest, whose other output is
        its complement); all outputs when None. Trees holding every output in their leaves then carry only these.

    Attributes
    ----------
    expected_value : ndarray, (n_outputs,)
        The base value: the cover-weighted mean output (path-dependent) or the mean output over ``data``.
    summary_note : str
        Interventional: why the per-leaf background summary was not built (then the slower per-(row,
        background row) walk runs; :attr:`shares_background` is False), else ''.

    Raises
    ------
    UnsupportedModel
        A model the engine does not read; use ``shap.TreeExplainer``.
    """

    def __init__(self, model, data=None, feature_perturbation: str = "tree_path_dependent",
                 n_threads: int | None = None, output_columns=None):
        if numba is None:  # pragma: no cover
            raise UnsupportedModel("numba is not installed")
        if feature_perturbation not in ("tree_path_dependent", "interventional"):
            raise ValueError(f"feature_perturbation must be 'tree_path_dependent' or 'interventional'; "
                             f"got {feature_perturbation!r}")
        forest, self.base_offset, self.input_dtype, self.n_outputs = _read_model(model)
        a, self.max_depth = forest.arrays()
        if output_columns is not None:
            cols = np.asarray(output_columns, dtype=np.int64)
            if a["value"].shape[1] == self.n_outputs and not a["out_off"].any():
                a["value"] = np.ascontiguousarray(a["value"][:, cols])  # fewer outputs, less work per node
                self._slice = None
            else:  # one output per tree (boosting stacks): explain all, keep the columns asked for
                self._slice = cols
            self.base_offset = self.base_offset[cols]
            self.n_outputs = cols.size
        else:
            self._slice = None
        self.tree_depths = np.asarray(forest.depth, dtype=np.int64)
        self.n_features = int(model.n_features_in_)
        # only the features some split uses get scratch space: the rest have no attribution
        internal = a["left"] >= 0
        self.used = np.unique(a["feature"][internal])
        remap = np.zeros(self.n_features, dtype=np.int64)
        remap[self.used] = np.arange(self.used.size)
        a["feature"] = np.where(internal, remap[a["feature"]], 0)
        # the kernels read each child's share of its parent's cover, one load and no division per edge
        ratio = np.ones_like(a["cover"])
        nodes = np.flatnonzero(internal)
        for child in (a["left"][nodes], a["right"][nodes]):
            ratio[child] = a["cover"][child] / a["cover"][nodes]
        a["ratio"] = ratio
        self._a = a
        self.tn, self.tw, self.tw0, self.kt = _gauss_legendre(self.tree_depths)
        # A binary forest or tree classifier whose two class probabilities add up to the same constant in every
        # leaf of a tree: the game of class 0 is a constant minus that of class 1, and a constant game has zero
        # Shapley values, so phi_0 = -phi_1 exactly. Only class 1 is computed then (both classes cost one).
        self._complement = False
        self._kvalue = a["value"]  # the leaf values the SHAP kernels read
        if a["value"].shape[1] == 2 and self._slice is None and not a["out_off"].any():
            self._complement = _complementary(a)
            if self._complement:
                self._kvalue = np.ascontiguousarray(a["value"][:, 1:])
        self.interventional = feature_perturbation == "interventional"
        self.summary_note = ""  # why interventional values do not run over the background summary
        self.n_threads = n_threads
        if self.interventional:
            if data is None:
                raise ValueError("interventional Tree SHAP needs background data")
            self.data = self._prepare(np.asarray(data))
            if self.data.shape[0] == 0:
                raise ValueError("interventional Tree SHAP needs at least one background row")
            self.expected_value = self.base_offset + self._cut(self._raw(self.data)).mean(axis=0)
            self._bg = self._summarise_background()
        else:
            self.data = np.zeros((1, self.used.size))
            self.expected_value = self.base_offset + self._cut(self._cover_mean())

    def _summarise_background(self):
        """Per leaf, the distinct masks of path features the background rows follow, with their counts.

        None, with the reason in ``self.summary_note``, when a leaf has more than 63 unique features on its
        path (the masks are 64-bit words) or when the summary would not pay: the per-(row, background row) walk
        is used then.
        """
        self.summary_note = ""
        a = self._a
        N = a["left"].size
        bitpos = np.zeros(N, dtype=np.int64)
        leaf_u = np.zeros(N, dtype=np.int64)
        leaf_fstart = np.zeros(N, dtype=np.int64)
        bounds = list(a["roots"]) + [N]
        n_leaves = int(np.count_nonzero(a["left"] < 0))
        flat = np.zeros(max(1, n_leaves * (self.max_depth + 1)), dtype=np.int64)
        ptr = 0
        for t, root in enumerate(a["roots"]):
            ptr = _path_bits(root, a["left"], a["right"], a["feature"], int(self.tree_depths[t]), bitpos, leaf_u,
                             leaf_fstart, flat, ptr)
        if leaf_u.max(initial=0) > 63:
            self.summary_note = "a leaf path with more than 63 genes"
            return None
        # a row costs one check per (leaf, distinct background mask) here against about 2 x depth node visits per
        # (tree, background row) in the pair walk or in shap's interventional walk (explain's fallback); a check
        # is over ten times cheaper than a visit (measured: _SUMMARY_CHECKS_PER_VISIT), so past that many checks
        # (huge trees: many leaves, each with nearly all background rows distinct) the summary no longer pays,
        # and it is not built (which also bounds its memory)
        nb = self.data.shape[0]
        budget = min(_SUMMARY_CHECKS_PER_VISIT * nb * int(self.tree_depths.sum()), _SUMMARY_MAX_MASKS)
        total = N  # every node is visited once per row too
        mstart = np.zeros(N + 1, dtype=np.int64)
        masks, counts = [], []
        scratch = np.zeros(N, dtype=np.uint64)
        for t, root in enumerate(a["roots"]):
            s, e = bounds[t], bounds[t + 1]
            leaves = np.flatnonzero(a["left"][s:e] < 0) + s
            M = np.empty((self.data.shape[0], leaves.size), dtype=np.uint64)
            for j, b in enumerate(self.data):
                _leaf_masks(b, root, a["left"], a["right"], a["feature"], a["threshold"], a["missing_left"],
                            bitpos, int(self.tree_depths[t]), scratch)
                M[j] = scratch[leaves]
            full = (np.uint64(1) << leaf_u[leaves].astype(np.uint64)) - np.uint64(1)
            S = np.sort(M & full, axis=0).T  # (leaves, background rows)
            first = np.ones(S.shape, dtype=bool)
            first[:, 1:] = S[:, 1:] != S[:, :-1]
            pos = np.flatnonzero(first.ravel())
            cnt = np.diff(np.append(pos, S.size))
            total += pos.size
            if total > budget:
                self.summary_note = (f"{total - N:,}+ distinct background masks over the leaves and {N:,} "
                                        f"nodes (more than {budget:,}): the summary would not pay")
                return None
            masks.append(S.ravel()[pos])
            counts.append(cnt.astype(np.float64))
            per_leaf = first.sum(axis=1)
            mstart[leaves + 1] = per_leaf
        # leaves of a tree are not contiguous in the node ids: start offsets by a running sum over all nodes
        mstart = np.cumsum(mstart)
        return dict(bitpos=bitpos, leaf_u=leaf_u, leaf_fstart=leaf_fstart, leaf_feats=flat[:max(ptr, 1)].copy(),
                    mstart=mstart, masks=np.concatenate(masks) if masks else np.zeros(0, np.uint64),
                    counts=np.concatenate(counts) if counts else np.zeros(0))

    @property
    def shares_background(self) -> bool:
        """True when interventional values run over the per-leaf background summary (the fast kernel)."""
        return self.interventional and self._bg is not None

    def _prepare(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} columns; got shape {X.shape}")
        # scikit-learn trees compare float32 inputs with their thresholds (shap casts the same way)
        return np.ascontiguousarray(X.astype(self.input_dtype).astype(np.float64)[:, self.used])

    @property
    def _width(self):
        # outputs the kernels fill (before the column selection of one-output-per-tree models)
        return self.n_outputs if self._slice is None else int(self._a["out_off"].max()) + 1

    def _cut(self, arr):
        return arr if self._slice is None else arr[..., self._slice]

    def _cover_mean(self):
        a = self._a
        total = np.zeros(self._width)
        bounds = list(a["roots"]) + [a["left"].size]
        for t in range(a["roots"].size):
            s, e = bounds[t], bounds[t + 1]
            leaf = a["left"][s:e] < 0
            w = a["cover"][s:e][leaf] / a["cover"][s]
            v = a["value"][s:e][leaf]
            off = a["out_off"][t]
            total[off:off + v.shape[1]] += w @ v
        return total

    def _raw(self, X):
        a = self._a
        out = np.zeros((X.shape[0], self._width))
        _run_blocks(_raw_rows, X.shape[0], self.n_threads,
                    lambda s, e: (X[s:e], a["roots"], a["out_off"], a["left"], a["right"], a["feature"],
                                  a["threshold"], a["missing_left"], a["value"], out[s:e]))
        return out

    def predict_raw(self, X) -> np.ndarray:
        """The explained output (base offset + sum of the trees) of every row, shape (n, n_outputs)."""
        return self.base_offset + self._cut(self._raw(self._prepare(X)))

    def shap_values(self, X) -> np.ndarray:
        """SHAP values, shape (n, n_features, n_outputs); rows add up to ``predict_raw - expected_value``."""
        Xu = self._prepare(X)
        a = self._a
        phi = np.zeros((Xu.shape[0], self.used.size, self._kvalue.shape[1] if self._complement else self._width))
        if self.interventional:
            from scipy.special import beta as beta_fn

            k = np.arange(self.max_depth + 2)
            beta = beta_fn(k[:, None] + 1.0, k[None, :] + 1.0)  # a! c! / (a + c + 1)!
            if self._bg is not None:
                g = self._bg
                _run_blocks(_shap_rows_interventional_shared, Xu.shape[0], self.n_threads,
                            lambda s, e: (Xu[s:e], a["roots"], a["out_off"], a["left"], a["right"], a["feature"],
                                          a["threshold"], a["missing_left"], self._kvalue, g["bitpos"], g["leaf_u"],
                                          g["leaf_fstart"], g["leaf_feats"], g["mstart"], g["masks"], g["counts"],
                                          beta, 1.0 / self.data.shape[0], self.max_depth, phi[s:e]))
            else:
                _run_blocks(_shap_rows_interventional, Xu.shape[0], self.n_threads,
                            lambda s, e: (Xu[s:e], self.data, a["roots"], a["out_off"], a["left"], a["right"],
                                          a["feature"], a["threshold"], a["missing_left"], self._kvalue, beta,
                                          self.max_depth, phi[s:e]))
            return self._scatter(phi)
        if self._kvalue.shape[1] == 1:
            # one output per tree: the kernels specialised on the quadrature node count (_fts_kernels), one call
            # per group of trees of equal count; each row still sums its trees in one fixed order
            groups = self._k_groups()
            value = np.ascontiguousarray(self._kvalue[:, 0])

            def block(s, e):
                for rows, sel, k in groups:
                    rows(Xu[s:e], a["roots"][sel], a["out_off"][sel], a["left"], a["right"], a["feature"],
                         a["threshold"], a["missing_left"], value, a["ratio"], self.tn[sel[0], :k].copy(),
                         self.tw[sel[0], :k].copy(), self.tw0[sel[0], :k].copy(), self.max_depth, phi[s:e])

            _run_blocks(block, Xu.shape[0], self.n_threads, lambda s, e: (s, e))
        else:
            _run_blocks(_shap_rows, Xu.shape[0], self.n_threads,
                        lambda s, e: (Xu[s:e], a["roots"], a["out_off"], a["left"], a["right"], a["feature"],
                                      a["threshold"], a["missing_left"], self._kvalue, a["ratio"], self.tn, self.tw,
                                      self.tw0, self.kt, self.max_depth, phi[s:e]))
        return self._scatter(phi)

    def _k_groups(self):
        """(kernel, tree indices, K) per quadrature node count present, in increasing K."""
        from iml_genomics.explain import _fts_kernels as fk

        out = []
        for k in np.unique(self.kt).tolist():
            out.append((fk.rows_kernel(k), np.flatnonzero(self.kt == k), int(k)))
        return out

    def _scatter(self, phi):
        """(n, n_features, n_outputs) from the kernels' (n, used features, width) values."""
        out = np.zeros((phi.shape[0], self.n_features, self.n_outputs))
        if self._complement:
            out[:, self.used, 1] = phi[:, :, 0]
            out[:, self.used, 0] = -phi[:, :, 0]
        else:
            out[:, self.used, :] = self._cut(phi)
        return out


def model_outputs(model) -> int:
    """Outputs the engine explains for ``model``: classes of a forest or tree classifier, else 1 per stack."""
    from sklearn.base import is_classifier

    forests, trees, _, hist = _families()
    if type(model) in forests + trees and is_classifier(model):
        return len(model.classes_)
    if type(model) in hist:
        return int(np.size(model._baseline_prediction))
    return 1


def supported(model) -> bool:
    """True when :class:`FastTreeExplainer` reads ``model`` (else use shap's TreeExplainer)."""
    try:
        _read_model(model)
    except UnsupportedModel:
        return False
    return numba is not None
