"""numba kernels of `lshsim.sim.incremental` (imported only there, lazily: importing this module
imports numba). Arrays are the solver's state; see `IncrementalSolver` for what each one holds."""
from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

DRAIN_RELATIVE = 1e-9     # lshsim.sim.network.RELATIVE_TOLERANCE
KEEP_RELATIVE = 1e-9      # classes below (1 - this) x the smallest drained rate keep their rates
TIGHT_RELATIVE = 1e-9     # a resource with less than this fraction of its capacity left is saturated
SAME_RATE_RELATIVE = 1e-13  # a refilled rate this close to the old one is the old one (rounding)
FILL_ROUNDS = 1             # a filling runs this many rounds at most, then goes on with the heap (_fill)


# ---- a tournament tree of the classes' finish times -------------------------------------------
# tree has 2P entries (P a power of two >= the class ids handed out): leaf P + i holds class i's
# finish time (inf when it is not in flight), node j the smaller of nodes 2j and 2j + 1, so tree[1]
# is the next drain. Classes of one source have neighbouring ids, so the paths that one refill
# updates share their upper nodes.
@_jit
def _set_key(tree, i, value):
    P = tree.shape[0] >> 1
    j = P + i
    tree[j] = value
    j >>= 1
    while j >= 1:
        a = tree[2 * j]
        b = tree[2 * j + 1]
        v = a if a < b else b
        if tree[j] == v:
            break
        tree[j] = v
        j >>= 1


@_jit
def build_tree(tree):
    P = tree.shape[0] >> 1
    for j in range(P - 1, 0, -1):
        a = tree[2 * j]
        b = tree[2 * j + 1]
        tree[j] = a if a < b else b


@_jit
def _collect(tree, threshold, buf, count):
    """Append to buf every class whose finish time is <= threshold; returns (buf, count)."""
    P = tree.shape[0] >> 1
    stack = np.empty(64, dtype=np.int64)
    top = 0
    if tree[1] <= threshold:
        stack[0] = 1
        top = 1
    while top > 0:
        top -= 1
        j = stack[top]
        if j >= P:
            buf, count = _push(buf, count, j - P)
            continue
        for c in (2 * j, 2 * j + 1):
            if tree[c] <= threshold:
                stack[top] = c
                top += 1
    return buf, count


# ---- progressive filling: rounds, then one bottleneck at a time (a heap of the resources' levels) --
@_jit
def _heap_push(hk, hv, n, key, value):
    """Push (key, value) on the binary min-heap hk/hv of n entries (room is the caller's); returns n + 1."""
    j = n
    while j > 0:
        parent = (j - 1) >> 1
        if hk[parent] <= key:
            break
        hk[j] = hk[parent]
        hv[j] = hv[parent]
        j = parent
    hk[j] = key
    hv[j] = value
    return n + 1


@_jit
def _sift_down(hk, hv, n, j, key, value):
    """Put (key, value) at slot j of the heap of n entries and move it down to its place."""
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and hk[c + 1] < hk[c]:
            c += 1
        if hk[c] >= key:
            break
        hk[j] = hk[c]
        hv[j] = hv[c]
        j = c
    hk[j] = key
    hv[j] = value


@_jit
def _heap_pop(hk, hv, n):
    """Remove the root of the heap of n entries (the caller read it); returns n - 1."""
    n -= 1
    if n > 0:
        _sift_down(hk, hv, n, 0, hk[n], hv[n])
    return n


@_jit
def _fill(ids, E, mult, cap_left, rate, bott, stats, max_rounds):
    """Max-min fair rates of classes `ids` on the capacity `cap_left` (R,) that the other classes
    leave (sentinel last, +inf), by progressive filling: in rounds first (at most `max_rounds`), then
    one bottleneck at a time, with a heap, for the classes the rounds left.

    A round freezes every local bottleneck at once: a resource whose fair share (capacity left /
    flows of unfrozen classes on it) is <= that of every resource sharing an unfrozen class with it
    (`lshsim.sim.network.FlowNetwork._compute_rates` says why this equals progressive filling); it
    costs O(unfrozen classes x hops + resources crossed), and on skewed MoE traffic most fillings
    need one or two (one round ends many of them: benchmarks/HISTORY.md, branch engine256). The rest
    goes on in `_fill_heap` (O(classes x hops x log resources), whatever the number of levels: the
    LocMoE fillings of `lshsim reproduce` need about ten rounds). Both work on the resources the classes cross, numbered locally
    (the sentinel is 0). Same rates either way up to rounding (the order of the subtractions).
    Writes rate[ids] and bott[p], the resource where ids[p] froze (its bottleneck; the sentinel when
    nothing binds it); counts the rounds and the heap's saturated resources in stats[2]; returns
    the smallest rate (inf if ids is empty). cap_left is not changed."""
    f = ids.shape[0]
    width = E.shape[1]
    R = cap_left.shape[0]
    sentinel = R - 1
    # the resources the classes cross, numbered locally, and the classes' rows in local numbers
    loc = np.full(R, -1, dtype=np.int64)
    glob = np.empty(min(R, f * width + 1), dtype=np.int64)
    loc[sentinel] = 0
    glob[0] = sentinel
    nr = 1
    Es = np.empty((f, width), dtype=np.int64)
    ms = np.empty(f)
    for p in range(f):
        i = ids[p]
        ms[p] = mult[i]
        for h in range(width):
            e = E[i, h]
            r = loc[e]
            if r < 0:
                r = nr
                loc[e] = r
                glob[r] = e
                nr += 1
            Es[p, h] = r
    cap = np.empty(nr)
    for r in range(nr):
        cap[r] = cap_left[glob[r]]
    cap[0] = np.inf
    free = np.arange(f)
    n_free = f
    smallest = np.inf
    rounds = 0
    if max_rounds > 0 and f > 0:
        count = np.empty(nr)
        level = np.empty(nr)
        link_min = np.empty(nr)
        class_min = np.empty(f)
        while n_free > 0 and rounds < max_rounds:
            rounds += 1
            stats[2] += 1
            count[:] = 0.0
            for q in range(n_free):
                p = free[q]
                for h in range(width):
                    count[Es[p, h]] += ms[p]
            for r in range(nr):
                level[r] = cap[r] / count[r] if count[r] > 0.0 else np.inf
                link_min[r] = np.inf
            level[0] = np.inf
            for q in range(n_free):
                p = free[q]
                low = np.inf
                for h in range(width):
                    v = level[Es[p, h]]
                    if v < low:
                        low = v
                class_min[p] = low
                for h in range(width):
                    r = Es[p, h]
                    if low < link_min[r]:
                        link_min[r] = low
            kept = 0
            for q in range(n_free):
                p = free[q]
                hit = False
                for h in range(width):
                    r = Es[p, h]
                    if r != 0 and level[r] <= link_min[r] * (1.0 + 1e-12):
                        hit = True
                        bott[p] = glob[r]
                        break
                if hit:
                    low = class_min[p]
                    rate[ids[p]] = low
                    if low < smallest:
                        smallest = low
                    share = ms[p] * low
                    for h in range(width):
                        r = Es[p, h]
                        if r != 0:
                            left = cap[r] - share
                            cap[r] = left if left > 0.0 else 0.0
                else:
                    free[kept] = p
                    kept += 1
            if kept == n_free:              # classes on no resource that can bind: nothing limits them
                for q in range(n_free):
                    rate[ids[free[q]]] = np.inf
                    bott[free[q]] = sentinel
                return smallest
            n_free = kept
    if n_free > 0:
        low = _fill_heap(ids, Es, ms, cap, glob, nr, free[:n_free], rate, bott, stats)
        if low < smallest:
            smallest = low
    return smallest


@_jit
def _fill_heap(ids, Es, ms, cap, glob, nr, free, rate, bott, stats):
    """The rest of `_fill`: the classes ids[free] (rows Es, multiplicities ms, in `_fill`'s local
    numbers, 0 the sentinel) on the capacity cap (nr,) the others left, one bottleneck at a time.
    The resources wait in a binary heap keyed by their fair share; the lowest saturates at that
    share, its unfrozen classes freeze at it, and the capacity they take is subtracted on their other
    resources (cap is consumed). A share only rises when classes freeze below it, so a key is a lower
    bound of its resource's share: a popped resource whose share rose meanwhile goes back in with the
    new one (lazy update), and one whose share did not is the lowest of all. Returns the smallest
    rate (inf if none)."""
    width = Es.shape[1]
    sentinel = glob[0]
    n_free = free.shape[0]
    cnt = np.zeros(nr)                    # flows of unfrozen classes on each resource
    n_on = np.zeros(nr, dtype=np.int64)   # unfrozen classes on each resource
    start = np.zeros(nr + 1, dtype=np.int64)
    for q in range(n_free):
        p = free[q]
        m = ms[p]
        for h in range(width):
            r = Es[p, h]
            if r != 0:
                cnt[r] += m
                n_on[r] += 1
                start[r + 1] += 1
    for r in range(nr):
        start[r + 1] += start[r]
    fillpos = start[:nr].copy()
    members = np.empty(start[nr], dtype=np.int64)
    for q in range(n_free):
        p = free[q]
        for h in range(width):
            r = Es[p, h]
            if r != 0:
                members[fillpos[r]] = p
                fillpos[r] += 1
    # the shares of the resources these classes cross, in a heap (built bottom up, O(nr))
    hk = np.empty(nr + n_free * width + 1)
    hv = np.empty(nr + n_free * width + 1, dtype=np.int64)
    n_heap = 0
    for r in range(1, nr):
        if n_on[r] > 0:
            hk[n_heap] = cap[r] / cnt[r]
            hv[n_heap] = r
            n_heap += 1
    for j in range(n_heap // 2 - 1, -1, -1):
        _sift_down(hk, hv, n_heap, j, hk[j], hv[j])
    frozen = np.zeros(Es.shape[0], dtype=np.bool_)
    n_left = 0                             # classes on a resource that can bind, not frozen yet
    for q in range(n_free):
        p = free[q]
        for h in range(width):
            if Es[p, h] != 0:
                n_left += 1
                break
    smallest = np.inf
    while n_heap > 0 and n_left > 0:       # (the resources left in the heap then carry no class)
        key = hk[0]
        r = hv[0]
        n_heap = _heap_pop(hk, hv, n_heap)
        if n_on[r] == 0:
            continue                       # every class on it froze elsewhere
        level = cap[r] / cnt[r]
        if level > key:                    # its share rose since it was pushed: back in, with the new one
            n_heap = _heap_push(hk, hv, n_heap, level, r)
            continue
        stats[2] += 1
        e_global = glob[r]
        if level < smallest:
            smallest = level
        for q in range(start[r], start[r + 1]):
            p = members[q]
            if frozen[p]:
                continue
            frozen[p] = True
            n_left -= 1
            rate[ids[p]] = level
            bott[p] = e_global
            m = ms[p]
            share = m * level
            for h in range(width):
                r2 = Es[p, h]
                if r2 != 0:
                    left = cap[r2] - share
                    cap[r2] = left if left > 0.0 else 0.0
                    cnt[r2] -= m
                    n_on[r2] -= 1
    for q in range(n_free):
        p = free[q]
        if not frozen[p]:                  # classes on no resource that can bind: nothing limits them
            rate[ids[p]] = np.inf
            bott[p] = sentinel
    return smallest


@_jit
def _add_use(ids, E, mult, rate, used, sign):
    width = E.shape[1]
    sentinel = used.shape[0] - 1
    for p in range(ids.shape[0]):
        i = ids[p]
        share = sign * mult[i] * rate[i]
        for h in range(width):
            e = E[i, h]
            if e != sentinel:
                used[e] += share
    used[sentinel] = 0.0


@_jit
def _push(buf, count, value):
    """Append value to the growable buffer buf (count used); returns (buf, count + 1)."""
    if count == buf.shape[0]:
        grown = np.empty(2 * count + 16, dtype=buf.dtype)
        grown[:count] = buf[:count]
        buf = grown
    buf[count] = value
    return buf, count + 1


@_jit
def incidence(ids, E, R):
    """CSR of resource -> the classes of `ids` that cross it: start (R + 1,), members."""
    width = E.shape[1]
    sentinel = R - 1
    start = np.zeros(R + 1, dtype=np.int64)
    for p in range(ids.shape[0]):
        i = ids[p]
        for h in range(width):
            e = E[i, h]
            if e != sentinel:
                start[e + 1] += 1
    for e in range(R):
        start[e + 1] += start[e]
    fillpos = start[:R].copy()
    members = np.empty(start[R], dtype=np.int64)
    for p in range(ids.shape[0]):
        i = ids[p]
        for h in range(width):
            e = E[i, h]
            if e != sentinel:
                members[fillpos[e]] = i
                fillpos[e] += 1
    return start, members


# ---- the two operations ----------------------------------------------------------------------
@_jit
def refill_all(now, ids, E, mult, size, rem, t_at, rate, bneck, tree, used, capacity, counters, scalars, stats):
    """Bring every alive class (`ids`) to `now`, recompute all rates, rebuild the finish-time tree.
    Returns False if a class got no bandwidth."""
    n = ids.shape[0]
    for p in range(n):
        i = ids[p]
        left = rem[i] - rate[i] * (now - t_at[i])
        rem[i] = left if left > 0.0 else 0.0
        t_at[i] = now
    cap_left = capacity.copy()
    bott = np.empty(n, dtype=np.int64)
    smallest = _fill(ids, E, mult, cap_left, rate, bott, stats, FILL_ROUNDS)
    for p in range(n):
        bneck[ids[p]] = bott[p]
    stats[0] += 1
    stats[1] += n
    stats[4] += 1
    if n > 0 and not smallest > 0.0:
        return False
    used[:] = 0.0
    _add_use(ids, E, mult, rate, used, 1.0)
    counters[2] = 0
    counters[1] = n
    P = tree.shape[0] >> 1
    tree[:] = np.inf
    bound = 0.0
    for p in range(n):
        i = ids[p]
        tree[P + i] = now + rem[i] / rate[i]
        if size[i] / rate[i] > bound:
            bound = size[i] / rate[i]
    scalars[0] = bound
    build_tree(tree)
    return True


@_jit
def _tight(capacity, used, e):
    return capacity[e] - used[e] <= TIGHT_RELATIVE * capacity[e]


@_jit
def drain(now, tolerance, E, mult, size, rem, t_at, rate, bneck, alive, mark, tree, inc_start, inc_members,
          used, capacity, counters, scalars, stats, out):
    """Drain the classes done at `now` and refill the ones a drain can change (module docstring of
    lshsim.sim.incremental). Returns the drained ids (maybe none) and a flag: True when rounding left
    a class no room (the caller then refills everything)."""
    window = DRAIN_RELATIVE * scalars[0]
    if tolerance > 0.0 and tolerance * now > window:
        window = tolerance * now
    P = tree.shape[0] >> 1
    candidates, n_candidates = _collect(tree, now + window, out, 0)
    d = 0
    for p in range(n_candidates):
        i = candidates[p]
        key = tree[P + i]
        left = rem[i] - rate[i] * (now - t_at[i])
        if key <= now or left <= DRAIN_RELATIVE * size[i] or (tolerance > 0.0 and
                                                              left <= rate[i] * (tolerance * now)):
            candidates[d] = i
            d += 1
    out = candidates
    for p in range(d):
        _set_key(tree, out[p], np.inf)
    if d == 0:
        return out[:0], False
    stats[3] += 1
    smallest = np.inf
    for p in range(d):
        if rate[out[p]] < smallest:
            smallest = rate[out[p]]
    threshold = smallest * (1.0 - KEEP_RELATIVE)
    R = capacity.shape[0]
    sentinel = R - 1
    width = E.shape[1]
    used0 = used.copy()                       # the allocation before the drain: which resources are tight
    in_a = np.zeros(R, dtype=np.bool_)        # resources whose capacity left may change
    # how far each resource was searched: 0 not, 1 its classes limited there (bneck), 2 all its classes;
    # queue entries are 2 e + (wanted state - 1)
    expanded = np.zeros(R, dtype=np.int8)
    excluded = np.zeros(R)           # a searched-1 resource: the fastest class of rate >= threshold left out
    a_list = np.empty(16, dtype=np.int64)
    n_a = 0
    queue = np.empty(16, dtype=np.int64)
    n_queue = 0
    drained = out[:d]
    _add_use(drained, E, mult, rate, used, -1.0)
    for p in range(d):
        i = out[p]
        alive[i] = False
        for h in range(width):
            e = E[i, h]
            if e != sentinel and not in_a[e]:
                in_a[e] = True
                a_list, n_a = _push(a_list, n_a, e)
                if _tight(capacity, used0, e):
                    queue, n_queue = _push(queue, n_queue, 2 * e)
    counters[1] -= d
    counters[3] += 1
    stamp = counters[3]
    seg = np.empty(16, dtype=np.int64)
    f = 0
    before = np.empty(16)             # the rates of seg before this drain
    f_before = 0
    low = np.inf
    while True:
        # the classes of rate >= threshold on every tight resource reached, and their resources
        while n_queue > 0:
            n_queue -= 1
            e = queue[n_queue] >> 1
            want = (queue[n_queue] & 1) + 1
            if expanded[e] >= want:
                continue
            expanded[e] = want
            stats[5] += inc_start[e + 1] - inc_start[e]
            for q in range(inc_start[e], inc_start[e + 1]):
                j = inc_members[q]
                if not alive[j] or mark[j] == stamp or rate[j] < threshold:
                    continue
                if want == 1 and bneck[j] != e:
                    if rate[j] > excluded[e]:
                        excluded[e] = rate[j]
                    continue
                mark[j] = stamp
                seg, f = _push(seg, f, j)
                before, f_before = _push(before, f_before, rate[j])
                share = mult[j] * rate[j]
                left = rem[j] - rate[j] * (now - t_at[j])
                rem[j] = left if left > 0.0 else 0.0
                t_at[j] = now
                for h in range(width):
                    e2 = E[j, h]
                    if e2 == sentinel:
                        continue
                    used[e2] -= share
                    if not in_a[e2]:
                        in_a[e2] = True
                        a_list, n_a = _push(a_list, n_a, e2)
                    if expanded[e2] == 0 and _tight(capacity, used0, e2):
                        # searched now rather than after a filling ((i) of the module docstring)
                        queue, n_queue = _push(queue, n_queue, 2 * e2)
        if f == 0:
            break
        cap_left = capacity - used
        for e in range(R - 1):
            if cap_left[e] < 0.0:
                cap_left[e] = 0.0
        cap_left[sentinel] = np.inf
        bott = np.empty(f, dtype=np.int64)
        low = _fill(seg[:f], E, mult, cap_left, rate, bott, stats, FILL_ROUNDS)
        stats[7] += 1
        stats[1] += f
        # searched further (and the filling runs again) where the result could be wrong: (ii) the
        # resource where a refilled class froze, (i) a resource saturated before on which a refilled
        # class changed its rate (a class limited there may now be limited differently)
        for p in range(f):
            i = seg[p]
            e = bott[p]
            if abs(rate[i] - before[p]) > SAME_RATE_RELATIVE * before[p]:
                if e != sentinel and expanded[e] == 0:
                    queue, n_queue = _push(queue, n_queue, 2 * e)
                for h in range(width):
                    e2 = E[i, h]
                    if e2 != sentinel and expanded[e2] == 0 and _tight(capacity, used0, e2):
                        queue, n_queue = _push(queue, n_queue, 2 * e2)
            else:
                # unchanged: its old bottleneck stands unless it was searched (then its classes of
                # rate >= threshold were refilled): then the one it froze at must be searched too
                rate[i] = before[p]
                b = bneck[i]
                if b != sentinel and expanded[b] > 0 and e != sentinel and expanded[e] == 0:
                    queue, n_queue = _push(queue, n_queue, 2 * e)
            # a class that froze where a faster class was left out is not the fastest there: search
            # that resource fully
            if e != sentinel and expanded[e] == 1 and rate[i] < excluded[e] * (1.0 - KEEP_RELATIVE):
                queue, n_queue = _push(queue, n_queue, 2 * e + 1)
        if n_queue == 0:
            stats[0] += 1
            for p in range(f):
                i = seg[p]
                if rate[i] != before[p] or (bneck[i] != sentinel and expanded[bneck[i]] > 0):
                    bneck[i] = bott[p]
            break
    if f > 0 and not low > 0.0:
        _add_use(seg[:f], E, mult, rate, used, 1.0)
        return out[:d], True
    for p in range(f):
        j = seg[p]
        if abs(rate[j] - before[p]) <= SAME_RATE_RELATIVE * before[p]:
            rate[j] = before[p]
        share = mult[j] * rate[j]
        for h in range(width):
            e2 = E[j, h]
            if e2 != sentinel:
                used[e2] += share
    counters[2] += d + f
    bound = scalars[0]
    for p in range(f):
        i = seg[p]
        if abs(rate[i] - before[p]) <= SAME_RATE_RELATIVE * before[p]:
            rate[i] = before[p]     # unchanged (to rounding): its finish time stands, no heap work
            continue
        stats[6] += 1
        _set_key(tree, i, now + rem[i] / rate[i])
        if size[i] / rate[i] > bound:
            bound = size[i] / rate[i]
    scalars[0] = bound
    return out[:d], False


# ---- the vectorised solver's rate update, compiled -------------------------------------------
@_jit
def vectorised_rates(E, mult, capacity, old_rate, keep_below, refill):
    """`lshsim.sim.network.FlowNetwork._compute_rates_numpy`, the same arithmetic in the same order
    (so the same numbers, bit for bit: tests/test_sim_network.py compares the two), without numpy's
    cost per call on small arrays.

    E (n, H) resource ids padded with the sentinel (the last id of `capacity`), mult (n,), capacity
    (R,), old_rate (n,); refill: keep the classes whose old rate is < keep_below and refill the others
    on the capacity they leave (else refill every class). Each `np.bincount(..., weights)` of the
    numpy version is a sum per resource in the order of its input (class by class, hop by hop),
    starting from 0.0, subtracted from the capacity left afterwards; `np.maximum(x, 0.0)` keeps x
    when x >= 0 or NaN. Returns (rate (n,), filling rounds, ok): ok is False when a round froze no
    class (the numpy version would never end; the caller then runs it)."""
    n, width = E.shape
    R = capacity.shape[0]
    sentinel = R - 1
    cap_left = capacity.copy()
    rate = np.zeros(n)
    free = np.empty(n, dtype=np.int64)
    n_free = 0
    sums = np.zeros(R)
    if refill:
        for c in range(n):
            if old_rate[c] < keep_below:
                rate[c] = old_rate[c]
                share = mult[c] * old_rate[c]
                for h in range(width):
                    sums[E[c, h]] += share
            else:
                free[n_free] = c
                n_free += 1
        for e in range(R):
            cap_left[e] = cap_left[e] - sums[e]
        cap_left[sentinel] = np.inf
        for e in range(R):
            x = cap_left[e]
            if not (x >= 0.0 or np.isnan(x)):
                cap_left[e] = 0.0
    else:
        for c in range(n):
            free[c] = c
        n_free = n
    count = np.zeros(R)
    level = np.empty(R)
    link_min = np.empty(R)
    class_min = np.empty(n)
    bottleneck = np.zeros(R, dtype=np.bool_)
    rounds = 0
    while n_free > 0:
        rounds += 1
        count[:] = 0.0
        for q in range(n_free):
            c = free[q]
            m = mult[c]
            for h in range(width):
                count[E[c, h]] += m
        for e in range(R):
            level[e] = cap_left[e] / count[e] if count[e] > 0.0 else np.inf
            link_min[e] = np.inf
        level[sentinel] = np.inf
        for q in range(n_free):
            c = free[q]
            low = level[E[c, 0]]
            for h in range(1, width):
                v = level[E[c, h]]
                if v < low:
                    low = v
            class_min[q] = low
            for h in range(width):
                e = E[c, h]
                if low < link_min[e]:
                    link_min[e] = low
        for e in range(R):
            bottleneck[e] = level[e] <= link_min[e] * (1 + 1e-12)
        bottleneck[sentinel] = False
        sums[:] = 0.0
        kept = 0
        for q in range(n_free):
            c = free[q]
            hit = False
            for h in range(width):
                if bottleneck[E[c, h]]:
                    hit = True
                    break
            if hit:
                rate[c] = class_min[q]
                share = mult[c] * rate[c]
                for h in range(width):
                    sums[E[c, h]] += share
            else:
                free[kept] = c
                kept += 1
        if kept == n_free:
            return rate, rounds, False
        n_free = kept
        for e in range(R):
            cap_left[e] = cap_left[e] - sums[e]
        cap_left[sentinel] = np.inf
        for e in range(R):
            x = cap_left[e]
            if not (x >= 0.0 or np.isnan(x)):
                cap_left[e] = 0.0
    return rate, rounds, True
