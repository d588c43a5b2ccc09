"""Numba kernels of the backtracking temporal memory (NuPIC's C++ ``Cells4``, core 0.4.10).

Everything one ``compute`` does runs inside :func:`tm_compute`; ``backtracking_tm.py`` only owns the
arrays, grows them between steps and converts them to and from checkpoints. The kernels take them
as one tuple ``a`` (``backtracking_tm.TMArrays``, whose fields its ``_FIELDS`` table declares). The
comments cite the steps of htm-algorithms.md §4.

Layout
------
* A *segment* has a permanent global id ``g``: the slot ``seg_slot[g]`` of cell ``seg_cell[g]``.
  NuPIC never shrinks a cell's slot vector, so (cell, slot) <-> ``g`` never changes; a released
  slot is a segment of length 0 on its cell's LIFO free list (``cell_free_head`` / ``seg_free_next``).
* Synapses of ``g`` are ``syn_src[b : b + seg_len[g]]`` (ascending source cell) and
  ``syn_perm[b : ...]`` (float32) with ``b = seg_syn_start[g]``: a room of ``seg_syn_cap[g]``
  entries in two flat pools, because segments average far fewer synapses than their bound. A
  segment that outgrows its room moves to the end of the pool (``S_SYN_POOL_USED``) with a little
  more (:func:`_segment_room`); a released segment keeps its room for the cell's next segment.
  Between steps, when a step might not fit, the live synapses are packed tight to the front
  (:func:`syn_pool_compact`; the pools are replaced only to grow), and a checkpoint is loaded
  tight too.
  The bound of a segment's length, and the size of the scratch rows, is the stride
  ``max_synapses_per_segment + new_synapse_count``: v0.5.6's stale freeing can leave a segment
  above 32 synapses, and that is the bound of how far.
* Cell slot lists and the forward index (per source cell, one entry ``2 * g + connected`` per
  synapse from it) are variable-length lists in a pool (``*_start``, ``*_len``, ``*_cap``,
  ``*_pool``); a full list moves to the end of the pool with twice the room, and the pool is
  compacted when full. The connected bit lets one pass over the forward index give both the
  activity count (any permanence) and the active test (connected synapses) of every segment;
  only a segment that kept a synapse whose entry a stale free erased (``seg_stale``) is tested
  by walking its synapses, as NuPIC does for all.
* Cell states are sets: a dense flag row and the list of members (``st_*[k]``), so clearing and
  copying cost the number of members, not the number of cells.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from htmengine.htm._jit import entry_kernel
from htmengine.htm.rng import rng_sample, rng_uint32

# p: int64 parameters
P_NCOLS = 0
P_CPC = 1
P_ACT_THRESHOLD = 2
P_MIN_THRESHOLD = 3
P_NEW_SYNAPSES = 4
P_MAX_SEGMENTS = 5
P_MAX_SYNAPSES = 6
P_PAM_LENGTH = 7
P_MAX_INF_BACKTRACK = 8
P_MAX_LRN_BACKTRACK = 9
P_MAX_SEQ_LENGTH = 10
P_STRIDE = 11
P_FREEING_034 = 12  # 1: core 50798446 (nupic 0.3.4) freeing sort keys
P_SYN_MOVE_SLACK = 13  # room beyond its length a segment gets when it moves
P_SIZE = 14

# pf: float32 parameters
PF_INITIAL = 0
PF_CONNECTED = 1
PF_INC = 2
PF_DEC = 3
PF_MAX = 4
PF_SIZE = 5

# s: int64 scalars
S_N_ITERATIONS = 0
S_N_LRN_ITERATIONS = 1
S_PAM_COUNTER = 2
S_LEARNED_SEQ_LENGTH = 3
S_N_SLOTS = 4  # global segment ids in use (slots ever created)
S_SLOT_POOL_USED = 5
S_FWD_POOL_USED = 6
S_N_UPDATES = 7
S_INF_QUEUE_LEN = 8
S_LRN_QUEUE_LEN = 9
S_N_SEGMENTS = 10  # non-empty segments
S_N_SYNAPSES = 11
S_FWD_ENTRIES = 12
S_ERROR = 13
# work counters (diagnostics for benchmarks; nothing reads them)
S_WORK_INF_PHASE2 = 14
S_WORK_LRN_PHASE2 = 15
S_WORK_FWD_ENTRIES = 16
S_WORK_ADAPTS = 17
S_SYN_POOL_USED = 18
S_SIZE = 19

# sf: float32 scalars
SF_AVG_INPUT_DENSITY = 0
SF_AVG_LEARNED_SEQ_LENGTH = 1
SF_SIZE = 2

# error codes in s[S_ERROR]
ERR_POOL_FULL = 1
ERR_SEGMENT_TOO_LONG = 2
ERR_NO_EVICTABLE_SEGMENT = 3

# cell state sets
INF_ACTIVE = 0
INF_PRED = 1
INF_PRED_T1 = 2
INF_ACTIVE_BACKUP = 3
INF_PRED_BACKUP = 4
INF_ACTIVE_CAND = 5
INF_PRED_CAND = 6
LRN_ACTIVE = 7
LRN_ACTIVE_T1 = 8
LRN_PRED = 9
LRN_PRED_T1 = 10
N_STATES = 11

# column confidence rows
CONF_T = 0
CONF_CAND = 1

_DUTY_TIERS = np.array([0, 100, 320, 1000, 3200, 10000, 32000, 100000, 320000], dtype=np.int64)
_DUTY_ALPHAS = np.array(
    [0.0, 0.0032, 0.0010, 0.00032, 0.00010, 0.000032, 0.000010, 0.0000032, 0.0000010],
    dtype=np.float32,
)

# ----------------------------------------------------------------------------------------------
# cell state sets


@njit(cache=True)
def _set_clear(st_flag, st_list, st_count, k):
    for j in range(st_count[k]):
        st_flag[k, st_list[k, j]] = 0
    st_count[k] = 0


@njit(cache=True)
def _set_add(st_flag, st_list, st_count, k, i):
    if st_flag[k, i] == 0:
        st_flag[k, i] = 1
        st_list[k, st_count[k]] = i
        st_count[k] += 1


@njit(cache=True)
def _set_copy(st_flag, st_list, st_count, dst, src):
    _set_clear(st_flag, st_list, st_count, dst)
    n = st_count[src]
    for j in range(n):
        i = st_list[src, j]
        st_flag[dst, i] = 1
        st_list[dst, j] = i
    st_count[dst] = n


@njit(cache=True)
def _sorted_members(a, k):
    """The members of set k in ascending order (``CStateIndexed::cellsOn(true)``)."""
    n = a.st_count[k]
    out = a.scr_on[:n]
    out[:] = a.st_list[k, :n]
    out.sort()
    return out


@njit(cache=True)
def _col_conf_clear(a, r):
    for j in range(a.col_count[r]):
        a.col_conf[r, a.col_list[r, j]] = 0.0
    a.col_count[r] = 0


@njit(cache=True)
def _col_conf_copy(a, dst, src):
    _col_conf_clear(a, dst)
    n = a.col_count[src]
    for j in range(n):
        c = a.col_list[src, j]
        a.col_list[dst, j] = c
        a.col_conf[dst, c] = a.col_conf[src, c]
    a.col_count[dst] = n


# ----------------------------------------------------------------------------------------------
# variable-length lists in a pool


@njit(cache=True)
def pool_compact(start, length, cap, pool):
    """Pack every list to the front of the pool, leaving each some room; returns the pool use."""
    n_lists = start.shape[0]
    total = 0
    for lst in range(n_lists):
        total += length[lst]
    tmp = np.empty(total, dtype=pool.dtype)
    k = 0
    for lst in range(n_lists):
        s = start[lst]
        for j in range(length[lst]):
            tmp[k] = pool[s + j]
            k += 1
    roomy = 0
    for lst in range(n_lists):
        if length[lst] > 0:
            roomy += length[lst] + length[lst] // 2 + 4
    give_room = roomy <= pool.shape[0]
    w = 0
    k = 0
    for lst in range(n_lists):
        n = length[lst]
        start[lst] = w
        for j in range(n):
            pool[w + j] = tmp[k]
            k += 1
        if n == 0:
            cap[lst] = 0
        elif give_room:
            cap[lst] = n + n // 2 + 4
        else:
            cap[lst] = n
        w += cap[lst]
    return w


@njit(cache=True)
def _pool_append(s, start, length, cap, pool, used_key, lst, value):
    n = length[lst]
    if n == cap[lst]:
        new_cap = 2 * n if n >= 4 else 4
        if s[used_key] + new_cap > pool.shape[0]:
            s[used_key] = pool_compact(start, length, cap, pool)
            if s[used_key] + new_cap > pool.shape[0]:
                s[S_ERROR] = ERR_POOL_FULL
                return
        if n == cap[lst]:
            old_start = start[lst]
            d = s[used_key]
            for j in range(n):
                pool[d + j] = pool[old_start + j]
            start[lst] = d
            cap[lst] = new_cap
            s[used_key] = d + new_cap
    pool[start[lst] + n] = value
    length[lst] = n + 1


@njit(cache=True)
def _fwd_add(s, fwd_start, fwd_len, fwd_cap, fwd_pool, src, g, connected):
    """Forward entry of segment g for src; an entry is ``2 * g + connected``."""
    _pool_append(s, fwd_start, fwd_len, fwd_cap, fwd_pool, S_FWD_POOL_USED, src, 2 * g + connected)
    s[S_FWD_ENTRIES] += 1


@njit(cache=True)
def _fwd_find(fwd_start, fwd_len, fwd_pool, src, g):
    """Pool position of src's entry for segment g, or -1."""
    s0 = fwd_start[src]
    for e in range(s0, s0 + fwd_len[src]):
        if fwd_pool[e] >> 1 == g:
            return e
    return -1


@njit(cache=True)
def _fwd_erase(s, fwd_start, fwd_len, fwd_pool, src, g):
    """Erase the entry of segment g from src's list, if any (swap with the last, like NuPIC)."""
    e = _fwd_find(fwd_start, fwd_len, fwd_pool, src, g)
    if e >= 0:
        n = fwd_len[src]
        fwd_pool[e] = fwd_pool[fwd_start[src] + n - 1]
        fwd_len[src] = n - 1
        s[S_FWD_ENTRIES] -= 1


@njit(cache=True)
def _position_in_segment(syn_src, s0, n, src):
    """Position of src among the n (sorted) synapses at pool offset s0, or -1."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) // 2
        if syn_src[s0 + mid] < src:
            lo = mid + 1
        else:
            hi = mid
    if lo < n and syn_src[s0 + lo] == src:
        return lo
    return -1


# ----------------------------------------------------------------------------------------------
# segments


@njit(cache=True)
def _duty_cycle(seg_pos, seg_dc, seg_dc_it, g, iteration, active, read_only):
    """``Segment::dutyCycle``: positive-activation duty cycle with tiered decay (§4.6)."""
    if iteration <= _DUTY_TIERS[1]:
        dc = np.float32(seg_pos[g]) / np.float32(iteration)
        if not read_only:
            seg_dc_it[g] = iteration
            seg_dc[g] = dc
        return dc
    age = iteration - seg_dc_it[g]
    if age == 0 and not active:
        return seg_dc[g]
    alpha = np.float32(0.0)
    for tier in range(_DUTY_TIERS.shape[0] - 1, 0, -1):
        if iteration > _DUTY_TIERS[tier]:
            alpha = _DUTY_ALPHAS[tier]
            break
    dc = np.float32((1.0 - np.float64(alpha)) ** np.float64(age) * np.float64(seg_dc[g]))
    if active:
        dc = np.float32(dc + alpha)
    if not read_only:
        seg_dc[g] = dc
        seg_dc_it[g] = iteration
    return dc


@njit(cache=True)
def _is_active(seg_len, seg_nconn, seg_syn_start, syn_src, syn_perm, bits, g, thr, conn):
    """``Cells4::isActive``: at least thr synapses of permanence >= conn from the cells set in
    ``bits`` (a bitset: small enough to stay in L1 while thousands of segments are tested)."""
    n = seg_len[g]
    remaining = seg_nconn[g]  # connected synapses not yet looked at
    if n < thr or remaining < thr:
        return False
    activity = 0
    s0 = seg_syn_start[g]
    for j in range(s0, s0 + n):
        if syn_perm[j] >= conn:
            remaining -= 1
            s = syn_src[j]
            if (bits[s >> 6] >> np.uint64(s & 63)) & np.uint64(1):
                activity += 1
                if activity >= thr:
                    return True
            elif activity + remaining < thr:
                return False
    return False


@njit(cache=True)
def _release_segment(a, g):
    if a.seg_is_free[g]:
        return
    a.s[S_N_SYNAPSES] -= a.seg_len[g]
    a.s[S_N_SEGMENTS] -= 1
    a.seg_len[g] = 0
    a.seg_nconn[g] = 0
    a.seg_total[g] = 0
    a.seg_pos[g] = 0
    cell = a.seg_cell[g]
    a.seg_free_next[g] = a.cell_free_head[cell]
    a.cell_free_head[cell] = g
    a.seg_is_free[g] = 1


@njit(cache=True)
def _segment_room(a, g, n):
    """Pool offset where segment g can hold n synapses: its own room if big enough, else new room
    at the end of the pool (the old one is garbage until compaction). Contents are not moved:
    callers write all n synapses. Returns -1, with the error set, if the pool is full.

    A moved segment gets a little slack, but none past ``max_synapses_per_segment``: only a
    stale free takes a segment beyond that, and it is rare."""
    if n <= a.seg_syn_cap[g]:
        return a.seg_syn_start[g]
    room = max(n, min(n + a.p[P_SYN_MOVE_SLACK], a.p[P_MAX_SYNAPSES]))
    s0 = a.s[S_SYN_POOL_USED]
    if s0 + room > a.syn_src.shape[0]:
        a.s[S_ERROR] = ERR_POOL_FULL
        return -1
    a.s[S_SYN_POOL_USED] = s0 + room
    a.seg_syn_start[g] = s0
    a.seg_syn_cap[g] = room
    return s0


@njit(cache=True)
def _create_segment(a, cell, src, n, seq_flag):
    """adaptSegment for a NEW update: take the last freed slot of the cell or append one."""
    g = a.cell_free_head[cell]
    if g >= 0:
        a.cell_free_head[cell] = a.seg_free_next[g]
        a.seg_free_next[g] = -1
        a.seg_is_free[g] = 0
    else:
        g = a.s[S_N_SLOTS]
        a.s[S_N_SLOTS] = g + 1
        a.seg_cell[g] = cell
        a.seg_slot[g] = a.cell_slot_len[cell]
        a.seg_free_next[g] = -1
        a.seg_is_free[g] = 0
        _pool_append(
            a.s,
            a.cell_slot_start,
            a.cell_slot_len,
            a.cell_slot_cap,
            a.slot_pool,
            S_SLOT_POOL_USED,
            cell,
            g,
        )
    if n > a.p[P_STRIDE]:
        a.s[S_ERROR] = ERR_SEGMENT_TOO_LONG
        return
    s0 = _segment_room(a, g, n)
    if s0 < 0:
        return
    it = a.s[S_N_LRN_ITERATIONS]
    init = a.pf[PF_INITIAL]
    nconn = 0
    for j in range(n):
        a.syn_src[s0 + j] = src[j]
        a.syn_perm[s0 + j] = init
        if init >= a.pf[PF_CONNECTED]:
            nconn += 1
    a.seg_len[g] = n
    a.seg_nconn[g] = nconn
    a.seg_seq[g] = seq_flag
    a.seg_stale[g] = 0
    a.seg_dc[g] = np.float32(1.0 / it)
    a.seg_dc_it[g] = it
    a.seg_last_active[g] = it
    a.seg_pos[g] = 1
    a.seg_total[g] = 1
    a.s[S_N_SEGMENTS] += 1
    a.s[S_N_SYNAPSES] += n
    for j in range(n):
        _fwd_add(
            a.s,
            a.fwd_start,
            a.fwd_len,
            a.fwd_cap,
            a.fwd_pool,
            src[j],
            g,
            int(init >= a.pf[PF_CONNECTED]),
        )


@njit(cache=True)
def _adapt_existing(a, g, upd, n_upd):
    """adaptSegment on an existing segment, with core 0.4.10's stale-position freeing (§4.6)."""
    if a.seg_len[g] == 0:
        return  # released meanwhile
    a.s[S_WORK_ADAPTS] += 1
    it = a.s[S_N_LRN_ITERATIONS]
    a.seg_last_active[g] = it
    a.seg_pos[g] += 1
    _duty_cycle(a.seg_pos, a.seg_dc, a.seg_dc_it, g, it, True, False)

    old_len = a.seg_len[g]
    old_start = a.seg_syn_start[g]
    src = a.scr_src
    perm = a.scr_perm
    for j in range(old_len):
        src[j] = a.syn_src[old_start + j]
        perm[j] = a.syn_perm[old_start + j]
    conn = a.pf[PF_CONNECTED]
    pmax = a.pf[PF_MAX]
    nconn = a.seg_nconn[g]

    # split into dec (not in the update) / inc (in it) positions; the rest of the update is new
    dec = a.scr_dec
    inc = a.scr_inc
    new = a.scr_new
    n_dec = 0
    n_inc = 0
    n_new = 0
    u = 0
    for j in range(old_len):
        s = src[j]
        while u < n_upd and upd[u] < s:
            new[n_new] = upd[u]
            n_new += 1
            u += 1
        if u < n_upd and upd[u] == s:
            inc[n_inc] = j
            n_inc += 1
            u += 1
        else:
            dec[n_dec] = j
            n_dec += 1
    while u < n_upd:
        new[n_new] = upd[u]
        n_new += 1
        u += 1

    removed = a.scr_removed
    n_removed = 0
    flipped = a.scr_flip  # sources whose connected status changed (forward entry bit to fix)
    n_flipped = 0

    # decrement pass: in place, then compaction that leaves the tail as it is
    minus_dec = -a.pf[PF_DEC]
    w = 0
    d = 0
    for j in range(old_len):
        if d < n_dec and dec[d] == j:
            d += 1
            old = perm[j]
            p = min(np.float32(old + minus_dec), pmax)
            perm[j] = p
            nconn += int(p >= conn) - int(old >= conn)
            if p <= 0:
                removed[n_removed] = src[j]
                n_removed += 1
                continue
            if (p >= conn) != (old >= conn):
                flipped[n_flipped] = src[j]
                n_flipped += 1
        src[w] = src[j]
        perm[w] = perm[j]
        w += 1
    size = w

    # increment pass, matched by source cell
    plus_inc = a.pf[PF_INC]
    j = 0
    for k in range(n_inc):
        target = a.syn_src[old_start + inc[k]]
        while src[j] != target:
            j += 1
        old = perm[j]
        p = min(np.float32(old + plus_inc), pmax)
        perm[j] = p
        nconn += int(p >= conn) - int(old >= conn)
        if (p >= conn) != (old >= conn):
            flipped[n_flipped] = target
            n_flipped += 1

    # freeing: keys read at the positions recorded before the decrement pass
    max_syn = a.p[P_MAX_SYNAPSES]
    freed_any = False
    if max_syn > 0 and n_new + size > max_syn:
        freed_any = True
        num_to_free = n_new + size - max_syn
        legacy = a.p[P_FREEING_034] != 0
        n_cand = n_dec
        if n_dec < num_to_free:
            n_cand = n_dec + n_inc
        cand_pos = a.scr_pos
        cand_key = a.scr_key
        for i in range(n_dec):
            cand_pos[i] = dec[i]
            cand_key[i] = perm[i] if legacy else perm[dec[i]]
        for i in range(n_cand - n_dec):
            cand_pos[n_dec + i] = inc[i]
            key = perm[i] if legacy else perm[inc[i]]
            cand_key[n_dec + i] = np.float32(key + pmax)
        # stable insertion sort by key (std::stable_sort; at most a few dozen candidates)
        for i in range(1, n_cand):
            key = cand_key[i]
            pos = cand_pos[i]
            j = i - 1
            while j >= 0 and cand_key[j] > key:
                cand_key[j + 1] = cand_key[j]
                cand_pos[j + 1] = cand_pos[j]
                j -= 1
            cand_key[j + 1] = key
            cand_pos[j + 1] = pos
        if num_to_free > n_cand:
            num_to_free = n_cand
        delete = a.scr_delete
        for i in range(num_to_free):
            q = cand_pos[i]
            delete[q] = 1
            removed[n_removed] = src[q]
            n_removed += 1
        # positions at or past the current length are not deleted (v0.5.6 stale positions)
        w = 0
        for j in range(size):
            if delete[j] != 0:
                continue
            src[w] = src[j]
            perm[w] = perm[j]
            w += 1
        for i in range(num_to_free):
            delete[cand_pos[i]] = 0
        size = w

    # add the new synapses (kept sorted by source) and their forward entries
    final_len = size + n_new
    if final_len > a.p[P_STRIDE]:
        a.s[S_ERROR] = ERR_SEGMENT_TOO_LONG
        return
    s0 = _segment_room(a, g, final_len)  # the old synapses are all in scratch by now
    if s0 < 0:
        return
    init = a.pf[PF_INITIAL]
    i = size - 1
    k = n_new - 1
    for w in range(final_len - 1, -1, -1):
        if k >= 0 and (i < 0 or new[k] > src[i]):
            a.syn_src[s0 + w] = new[k]
            a.syn_perm[s0 + w] = init
            k -= 1
        else:
            a.syn_src[s0 + w] = src[i]
            a.syn_perm[s0 + w] = perm[i]
            i -= 1
    if init >= conn:
        nconn += n_new
    a.s[S_N_SYNAPSES] += final_len - old_len
    a.seg_len[g] = final_len
    new_connected = int(init >= conn)
    for k in range(n_new):
        _fwd_add(a.s, a.fwd_start, a.fwd_len, a.fwd_cap, a.fwd_pool, new[k], g, new_connected)

    for k in range(n_removed):
        _fwd_erase(a.s, a.fwd_start, a.fwd_len, a.fwd_pool, removed[k], g)
        if _position_in_segment(a.syn_src, s0, final_len, removed[k]) >= 0:
            a.seg_stale[g] = 1  # a synapse without forward entry: count it by scanning
    for k in range(n_flipped):
        j = _position_in_segment(a.syn_src, s0, final_len, flipped[k])
        if j >= 0:
            e = _fwd_find(a.fwd_start, a.fwd_len, a.fwd_pool, flipped[k], g)
            if e >= 0:
                a.fwd_pool[e] = 2 * g + int(a.syn_perm[s0 + j] >= conn)
    if n_removed > 0 or freed_any:
        nconn = 0
        for j in range(s0, s0 + final_len):
            if a.syn_perm[j] >= conn:
                nconn += 1
    a.seg_nconn[g] = nconn
    if final_len == 0:
        _release_segment(a, g)


@njit(cache=True)
def _compute_update(
    seg_len, seg_syn_start, syn_src, flag, rng, cand, new_synapse_count, g, on_sorted, out
):
    """``computeUpdate`` with new synapses: the update list for segment g (or NEW if g < 0)
    from the flagged cells, whose sorted list is ``on_sorted``."""
    m = 0
    if g >= 0:
        s0 = seg_syn_start[g]
        for j in range(s0, s0 + seg_len[g]):
            s = syn_src[j]
            if flag[s] != 0:
                out[m] = s
                m += 1
    need = new_synapse_count - m
    if need > 0:
        nc = 0
        if g >= 0:
            end = s0 + seg_len[g]
            j = s0
            for i in range(on_sorted.shape[0]):
                c = on_sorted[i]
                while j < end and syn_src[j] < c:
                    j += 1
                if j < end and syn_src[j] == c:
                    continue
                cand[nc] = c
                nc += 1
        else:
            for i in range(on_sorted.shape[0]):
                cand[nc] = on_sorted[i]
                nc += 1
        if nc > 0:
            had = m
            if nc <= need:
                for i in range(nc):
                    out[m] = cand[i]
                    m += 1
            elif need == 1:
                out[m] = cand[rng_uint32(rng, nc)]
                m += 1
            else:
                chosen = rng_sample(rng, cand[:nc], need)
                for i in range(need):
                    out[m] = chosen[i]
                    m += 1
            if had > 0:
                out[:m].sort()
    return m


@njit(cache=True)
def _clean_updates(a, g):
    """``cleanUpdatesList``: drop queued updates aimed at segment g."""
    w = 0
    for i in range(a.s[S_N_UPDATES]):
        if a.upd_seg[i] == g:
            continue
        if w != i:
            a.upd_cell[w] = a.upd_cell[i]
            a.upd_seg[w] = a.upd_seg[i]
            a.upd_seq[w] = a.upd_seq[i]
            a.upd_time[w] = a.upd_time[i]
            a.upd_len[w] = a.upd_len[i]
            a.upd_src[w, : a.upd_len[i]] = a.upd_src[i, : a.upd_len[i]]
        w += 1
    a.s[S_N_UPDATES] = w


@njit(cache=True)
def _random_cell_with_room(cell_slot_len, rng, cand, base, cpc, max_segments):
    """``getCellForNewSegment``'s usual case: a random non-start cell below the slot limit."""
    nc = 0
    for cell in range(base + 1, base + cpc):
        if cell_slot_len[cell] < max_segments:
            cand[nc] = cell
            nc += 1
    if nc > 0:
        return cand[rng_uint32(rng, nc)]
    return -1


@njit(cache=True)
def _evict_for_new_segment(a, col):
    """``getCellForNewSegment`` when every non-start cell is full: free the segment with the
    lowest duty cycle below 1.0 (first found on ties) and return its cell (§4.6)."""
    cpc = a.p[P_CPC]
    base = col * cpc
    it = a.s[S_N_LRN_ITERATIONS]
    best_dc = np.float32(1.0)
    best_g = -1
    best_cell = -1
    for cell in range(base + 1, base + cpc):
        s0 = a.cell_slot_start[cell]
        for slot in range(a.cell_slot_len[cell]):
            g = a.slot_pool[s0 + slot]
            if a.seg_len[g] > 0:
                dc = _duty_cycle(a.seg_pos, a.seg_dc, a.seg_dc_it, g, it, False, False)
                if dc < best_dc:
                    best_dc = dc
                    best_g = g
                    best_cell = cell
    if best_g < 0:
        a.s[S_ERROR] = ERR_NO_EVICTABLE_SEGMENT
        return base + 1
    s0 = a.seg_syn_start[best_g]
    for j in range(s0, s0 + a.seg_len[best_g]):
        _fwd_erase(a.s, a.fwd_start, a.fwd_len, a.fwd_pool, a.syn_src[j], best_g)
    _clean_updates(a, best_g)
    _release_segment(a, best_g)
    return best_cell


@njit(cache=True)
def _best_matching_cell_t1(
    cell_slot_start,
    cell_slot_len,
    slot_pool,
    seg_len,
    seg_syn_start,
    syn_src,
    flag,
    base,
    cpc,
    min_threshold,
):
    """``getBestMatchingCellT1``: direct counts over all synapses against the flagged cells."""
    best_cell = -1
    best_g = -1
    best_activity = min_threshold
    for cell in range(base, base + cpc):
        max_activity = 0
        max_g = -1
        s0 = cell_slot_start[cell]
        for slot in range(cell_slot_len[cell]):
            g = slot_pool[s0 + slot]
            n = seg_len[g]
            if n == 0:
                continue
            activity = 0
            s1 = seg_syn_start[g]
            for j in range(s1, s1 + n):
                if flag[syn_src[j]] != 0:
                    activity += 1
            if activity > max_activity:
                max_activity = activity
                max_g = g
        if max_activity >= best_activity:
            best_activity = max_activity
            best_g = max_g
            best_cell = cell
    return best_cell, best_g


@njit(cache=True)
def _count_active_segments(a, k, threshold):
    """Segments with at least ``threshold`` synapses (any permanence) from the members of set k.

    Counts come from the forward index, so a synapse whose forward entry a stale free erased does
    not count (§4.4). Returns how many segments qualified; their ids (ascending), counts and
    counts of connected synapses (from the entries' connected bit) are in ``reach_seg``,
    ``reach_count`` and ``reach_connected``.
    """
    counts = a.seg_count  # low byte: synapses of any permanence; high byte: connected ones
    fwd_start = a.fwd_start
    fwd_len = a.fwd_len
    fwd_pool = a.fwd_pool
    members = a.st_list[k]
    visited = 0
    for j in range(a.st_count[k]):
        src = members[j]
        s0 = fwd_start[src]
        n = fwd_len[src]
        visited += n
        for e in range(s0, s0 + n):
            entry = fwd_pool[e]
            counts[entry >> 1] += 1 + ((entry & 1) << 8)
    a.s[S_WORK_FWD_ENTRIES] += visited
    reach_seg = a.reach_seg
    reach_count = a.reach_count
    reach_connected = a.reach_connected
    words = counts.view(np.uint64)  # scan 4 segments at a time; most are untouched
    m = 0
    for w in range((a.s[S_N_SLOTS] + 3) // 4):
        if words[w] != 0:
            for g in range(4 * w, 4 * w + 4):
                c = counts[g] & 255
                if c >= threshold:
                    reach_seg[m] = g
                    reach_count[m] = c
                    reach_connected[m] = counts[g] >> 8
                    m += 1
            words[w] = 0
    return m


# ----------------------------------------------------------------------------------------------
# inference (§4.4)


@njit(cache=True)
def _infer_phase1(a, cols, use_start_cells):
    st_flag = a.st_flag
    st_list = a.st_list
    st_count = a.st_count
    _set_clear(st_flag, st_list, st_count, INF_ACTIVE)
    cpc = a.p[P_CPC]
    if use_start_cells:
        for c in cols:
            _set_add(st_flag, st_list, st_count, INF_ACTIVE, c * cpc)
        return True
    pred_flag = st_flag[INF_PRED_T1]
    n_predicted_cols = 0
    for c in cols:
        base = c * cpc
        any_predicted = False
        for cell in range(base, base + cpc):
            if pred_flag[cell] != 0:
                any_predicted = True
                _set_add(st_flag, st_list, st_count, INF_ACTIVE, cell)
        if any_predicted:
            n_predicted_cols += 1
        else:
            for cell in range(base, base + cpc):
                _set_add(st_flag, st_list, st_count, INF_ACTIVE, cell)
    return n_predicted_cols >= 0.5 * cols.shape[0]


@njit(cache=True)
def _stable_order_by(segs, key):
    """Positions into ``segs`` in ascending ``key[segs[i]]`` order, ties in their order in
    ``segs`` (keys are non-negative). LSD radix sort, 8 bits of the key per pass."""
    m = segs.shape[0]
    out = np.arange(m)
    max_key = 0
    for i in range(m):
        max_key = max(max_key, key[segs[i]])
    tmp = np.empty(m, dtype=np.int64)
    counts = np.empty(257, dtype=np.int64)
    shift = 0
    while (max_key >> shift) > 0:
        counts[:] = 0
        for i in range(m):
            counts[((key[segs[out[i]]] >> shift) & 255) + 1] += 1
        for b in range(256):
            counts[b + 1] += counts[b]
        for i in range(m):
            d = (key[segs[out[i]]] >> shift) & 255
            tmp[counts[d]] = out[i]
            counts[d] += 1
        out, tmp = tmp, out
        shift += 8
    return out


@njit(cache=True)
def _infer_phase2(a):
    a.s[S_WORK_INF_PHASE2] += 1
    thr = a.p[P_ACT_THRESHOLD]
    m = _count_active_segments(a, INF_ACTIVE, thr)
    st_flag = a.st_flag
    st_list = a.st_list
    st_count = a.st_count
    _set_clear(st_flag, st_list, st_count, INF_PRED)
    _col_conf_clear(a, CONF_T)
    conn = a.pf[PF_CONNECTED]
    cpc = a.p[P_CPC]
    it = a.s[S_N_LRN_ITERATIONS]
    seg_cell = a.seg_cell
    seg_pos = a.seg_pos
    seg_dc = a.seg_dc
    seg_dc_it = a.seg_dc_it
    seg_len = a.seg_len
    seg_nconn = a.seg_nconn
    seg_syn_start = a.seg_syn_start
    syn_src = a.syn_src
    syn_perm = a.syn_perm
    bits = a.active_bits
    members = st_list[INF_ACTIVE]
    for j in range(st_count[INF_ACTIVE]):
        cell = members[j]
        bits[cell >> 6] |= np.uint64(1) << np.uint64(cell & 63)
    conf = a.col_conf[CONF_T]
    col_list = a.col_list[CONF_T]
    n_conf = 0
    reach_seg = a.reach_seg
    reach_connected = a.reach_connected
    seg_stale = a.seg_stale
    # (cell, slot) order: by owning cell, as a cell's slots got increasing ids
    order = _stable_order_by(reach_seg[:m], seg_cell)
    pred_flag = st_flag[INF_PRED]
    n_predicted_cols = 0
    last_predicted_col = -1
    for i in range(m):
        position = order[i]
        g = reach_seg[position]
        cell = seg_cell[g]
        c = cell // cpc
        dc = _duty_cycle(seg_pos, seg_dc, seg_dc_it, g, it, False, False)
        if n_conf == 0 or col_list[n_conf - 1] != c:
            col_list[n_conf] = c
            n_conf += 1
        conf[c] = np.float32(conf[c] + dc)
        if pred_flag[cell] != 0:
            continue  # already predicted: the active test would change nothing
        if seg_stale[g] != 0:
            # a synapse lost its forward entry (§4.4): the active test must walk the segment
            active = _is_active(
                seg_len, seg_nconn, seg_syn_start, syn_src, syn_perm, bits, g, thr, conn
            )
        else:
            active = reach_connected[position] >= thr
        if active:
            _set_add(st_flag, st_list, st_count, INF_PRED, cell)
            if c != last_predicted_col:
                n_predicted_cols += 1
                last_predicted_col = c
    for j in range(st_count[INF_ACTIVE]):
        bits[members[j] >> 6] = 0
    a.col_count[CONF_T] = n_conf
    total = np.float32(0.0)
    for j in range(n_conf):
        total = np.float32(total + conf[col_list[j]])
    if total > 0:
        for j in range(n_conf):
            c = col_list[j]
            conf[c] = np.float32(conf[c] / total)
    return n_predicted_cols >= 0.5 * np.float64(a.sf[SF_AVG_INPUT_DENSITY])


@njit(cache=True)
def _infer_backtrack(a):
    n = a.s[S_INF_QUEUE_LEN]
    if n == 0:
        return
    cur = n - 1
    _set_copy(a.st_flag, a.st_list, a.st_count, INF_ACTIVE_BACKUP, INF_ACTIVE)
    _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED_BACKUP, INF_PRED_T1)
    candidate = -1
    for start in range(n):
        in_sequence = False
        for offset in range(start, n):
            _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED_T1, INF_PRED)
            pattern = a.inf_q[offset, : a.inf_q_len[offset]]
            in_sequence = _infer_phase1(a, pattern, offset == start)
            if not in_sequence:
                break
            in_sequence = _infer_phase2(a)
            if not in_sequence:
                break
        if in_sequence:
            candidate = start
            if start != cur:
                _set_copy(a.st_flag, a.st_list, a.st_count, INF_ACTIVE_CAND, INF_ACTIVE)
                _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED_CAND, INF_PRED)
                _col_conf_copy(a, CONF_CAND, CONF_T)
            break
    if candidate == -1:
        _set_copy(a.st_flag, a.st_list, a.st_count, INF_ACTIVE, INF_ACTIVE_BACKUP)
        _infer_phase2(a)
    elif candidate != cur:
        _set_copy(a.st_flag, a.st_list, a.st_count, INF_ACTIVE, INF_ACTIVE_CAND)
        _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED, INF_PRED_CAND)
        _col_conf_copy(a, CONF_T, CONF_CAND)
    # every start before the candidate failed; all failed without one
    n_pop = n if candidate == -1 else candidate + 1
    _queue_pop_front(a.inf_q, a.inf_q_len, a.s, S_INF_QUEUE_LEN, n_pop)
    _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED_T1, INF_PRED_BACKUP)


@njit(cache=True)
def _queue_pop_front(q, q_len, s, len_key, n_pop):
    n = s[len_key]
    for i in range(n_pop, n):
        m = q_len[i]
        q[i - n_pop, :m] = q[i, :m]
        q_len[i - n_pop] = m
    s[len_key] = n - n_pop


@njit(cache=True)
def _queue_push(q, q_len, s, len_key, max_len, cols):
    if s[len_key] > max_len:
        _queue_pop_front(q, q_len, s, len_key, 1)
    n = s[len_key]
    q[n, : cols.shape[0]] = cols
    q_len[n] = cols.shape[0]
    s[len_key] = n + 1


@njit(cache=True)
def _update_inference_state(a, cols):
    _set_copy(a.st_flag, a.st_list, a.st_count, INF_PRED_T1, INF_PRED)
    if a.p[P_MAX_INF_BACKTRACK] > 0:
        _queue_push(a.inf_q, a.inf_q_len, a.s, S_INF_QUEUE_LEN, a.p[P_MAX_INF_BACKTRACK], cols)
    if not _infer_phase1(a, cols, False):
        _infer_backtrack(a)
        return
    if not _infer_phase2(a):
        _infer_backtrack(a)


# ----------------------------------------------------------------------------------------------
# learning (§4.5)


@njit(cache=True)
def _process_segment_updates(a, cols):
    """Apply queued updates whose column is active now; pooling is off, so all leave the queue."""
    for c in cols:
        a.col_flag[c] = 1
    cpc = a.p[P_CPC]
    it = a.s[S_N_LRN_ITERATIONS]
    for i in range(a.s[S_N_UPDATES]):
        if it - a.upd_time[i] > 1:
            continue
        cell = a.upd_cell[i]
        if a.col_flag[cell // cpc] != 0:
            n = a.upd_len[i]
            if a.upd_seg[i] < 0:
                _create_segment(a, cell, a.upd_src[i], n, a.upd_seq[i])
            else:
                _adapt_existing(a, a.upd_seg[i], a.upd_src[i], n)
    a.s[S_N_UPDATES] = 0
    for c in cols:
        a.col_flag[c] = 0


@njit(cache=True)
def _learn_phase1(a, cols, read_only):
    _set_clear(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE)
    cpc = a.p[P_CPC]
    pred_flag = a.st_flag[LRN_PRED_T1]
    on_t1 = _sorted_members(a, LRN_ACTIVE_T1) if not read_only else a.scr_on[:0]
    new_syn = a.p[P_NEW_SYNAPSES]
    min_threshold = a.p[P_MIN_THRESHOLD]
    max_seg = a.p[P_MAX_SEGMENTS]
    n_unpredicted = 0
    for c in cols:
        base = c * cpc
        n_predicted = 0
        predicted_cell = -1
        for cell in range(base, base + cpc):
            if pred_flag[cell] != 0:
                n_predicted += 1
                predicted_cell = cell
        if n_predicted == 1:
            _set_add(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE, predicted_cell)
            continue
        n_unpredicted += 1
        if read_only:
            continue
        cell, g = _best_matching_cell_t1(
            a.cell_slot_start,
            a.cell_slot_len,
            a.slot_pool,
            a.seg_len,
            a.seg_syn_start,
            a.syn_src,
            a.st_flag[LRN_ACTIVE_T1],
            base,
            cpc,
            min_threshold,
        )
        if g >= 0 and a.seg_seq[g] != 0:
            _set_add(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE, cell)
            m = _compute_update(
                a.seg_len,
                a.seg_syn_start,
                a.syn_src,
                a.st_flag[LRN_ACTIVE_T1],
                a.rng,
                a.scr_cand,
                new_syn,
                g,
                on_t1,
                a.scr_upd,
            )
            a.seg_total[g] += 1
            if m > 0:
                _adapt_existing(a, g, a.scr_upd, m)
        else:
            cell = _random_cell_with_room(a.cell_slot_len, a.rng, a.scr_cand, base, cpc, max_seg)
            if cell < 0:
                cell = _evict_for_new_segment(a, c)
            _set_add(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE, cell)
            m = _compute_update(
                a.seg_len,
                a.seg_syn_start,
                a.syn_src,
                a.st_flag[LRN_ACTIVE_T1],
                a.rng,
                a.scr_cand,
                new_syn,
                -1,
                on_t1,
                a.scr_upd,
            )
            if m > 0:
                _create_segment(a, cell, a.scr_upd, m, 1)
        if a.s[S_ERROR] != 0:
            return False
    return n_unpredicted < cols.shape[0] // 2


@njit(cache=True)
def _learn_phase2(a, read_only):
    a.s[S_WORK_LRN_PHASE2] += 1
    thr = a.p[P_ACT_THRESHOLD]
    m = _count_active_segments(a, LRN_ACTIVE, thr)
    st_flag = a.st_flag
    st_list = a.st_list
    st_count = a.st_count
    _set_clear(st_flag, st_list, st_count, LRN_PRED)
    cpc = a.p[P_CPC]
    seg_cell = a.seg_cell
    col_best = a.col_best
    col_best_count = a.col_best_count
    # best per column: highest count, ties to the higher cell, then the lower slot (= lower id)
    cols = np.empty(m, dtype=np.int64)
    n_cols = 0
    for i in range(m):
        g = a.reach_seg[i]
        count = a.reach_count[i]
        c = seg_cell[g] // cpc
        b = col_best[c]
        if b < 0:
            col_best[c] = g
            col_best_count[c] = count
            cols[n_cols] = c
            n_cols += 1
        elif count > col_best_count[c] or (
            count == col_best_count[c]
            and (seg_cell[g] > seg_cell[b] or (seg_cell[g] == seg_cell[b] and g < b))
        ):
            col_best[c] = g
            col_best_count[c] = count
    cols = cols[:n_cols]
    cols.sort()
    on_t = _sorted_members(a, LRN_ACTIVE) if not read_only else a.scr_on[:0]
    new_syn = a.p[P_NEW_SYNAPSES]
    active_flag = st_flag[LRN_ACTIVE]
    seg_len = a.seg_len
    seg_syn_start = a.seg_syn_start
    syn_src = a.syn_src
    rng = a.rng
    scr_cand = a.scr_cand
    it = a.s[S_N_LRN_ITERATIONS]
    for c in cols:
        g = col_best[c]
        col_best[c] = -1
        cell = seg_cell[g]
        _set_add(st_flag, st_list, st_count, LRN_PRED, cell)
        if not read_only:
            i = a.s[S_N_UPDATES]
            n = _compute_update(
                seg_len,
                seg_syn_start,
                syn_src,
                active_flag,
                rng,
                scr_cand,
                new_syn,
                g,
                on_t,
                a.upd_src[i],
            )
            if n > 0:
                a.upd_cell[i] = cell
                a.upd_seg[i] = g
                a.upd_seq[i] = 0
                a.upd_time[i] = it
                a.upd_len[i] = n
                a.s[S_N_UPDATES] = i + 1
            a.seg_total[g] += 1


@njit(cache=True)
def _learn_backtrack_from(a, start, read_only):
    n = a.s[S_LRN_QUEUE_LEN]
    cur = n - 1
    if not read_only:
        a.s[S_N_UPDATES] = 0
    cpc = a.p[P_CPC]
    in_sequence = True
    for offset in range(start, n):
        _set_copy(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE_T1, LRN_ACTIVE)
        _set_copy(a.st_flag, a.st_list, a.st_count, LRN_PRED_T1, LRN_PRED)
        pattern = a.lrn_q[offset, : a.lrn_q_len[offset]]
        if not read_only:
            _process_segment_updates(a, pattern)
        if offset == start:
            _set_clear(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE)
            for c in pattern:
                _set_add(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE, c * cpc)
                in_sequence = True
        else:
            in_sequence = _learn_phase1(a, pattern, read_only)
        if not in_sequence or offset == cur:
            break
        _learn_phase2(a, read_only)
    return in_sequence


@njit(cache=True)
def _learn_backtrack(a):
    n = a.s[S_LRN_QUEUE_LEN]
    k = n - 1 if n > 0 else 0
    if k <= 0:
        return 0
    found = -1
    for start in range(k):
        if _learn_backtrack_from(a, start, True):
            found = start
            break
    if found < 0:
        a.s[S_LRN_QUEUE_LEN] = 0
        return 0
    _learn_backtrack_from(a, found, False)
    _queue_pop_front(a.lrn_q, a.lrn_q_len, a.s, S_LRN_QUEUE_LEN, found + 1)
    return k - found


@njit(cache=True)
def _update_learning_state(a, cols):
    _set_copy(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE_T1, LRN_ACTIVE)
    _set_copy(a.st_flag, a.st_list, a.st_count, LRN_PRED_T1, LRN_PRED)
    if a.p[P_MAX_LRN_BACKTRACK] > 0:
        _queue_push(a.lrn_q, a.lrn_q_len, a.s, S_LRN_QUEUE_LEN, a.p[P_MAX_LRN_BACKTRACK], cols)
    _process_segment_updates(a, cols)
    if a.s[S_PAM_COUNTER] > 0:
        a.s[S_PAM_COUNTER] -= 1
    a.s[S_LEARNED_SEQ_LENGTH] += 1
    pam_length = a.p[P_PAM_LENGTH]
    if _learn_phase1(a, cols, False):
        a.s[S_PAM_COUNTER] = pam_length
    max_seq = a.p[P_MAX_SEQ_LENGTH]
    if a.s[S_PAM_COUNTER] == 0 or (max_seq != 0 and a.s[S_LEARNED_SEQ_LENGTH] >= max_seq):
        seq_length = a.s[S_LEARNED_SEQ_LENGTH]
        if a.s[S_PAM_COUNTER] == 0:
            seq_length -= pam_length
        _update_avg_learned_seq_length(a, seq_length)
        backsteps = _learn_backtrack(a)
        if backsteps == 0:
            _set_clear(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE)
            cpc = a.p[P_CPC]
            for c in cols:
                _set_add(a.st_flag, a.st_list, a.st_count, LRN_ACTIVE, c * cpc)
            a.s[S_LRN_QUEUE_LEN] = 0
        a.s[S_PAM_COUNTER] = pam_length
        a.s[S_LEARNED_SEQ_LENGTH] = backsteps
        a.s[S_N_UPDATES] = 0
    _learn_phase2(a, False)


@njit(cache=True)
def _update_avg_learned_seq_length(a, seq_length):
    """Diagnostic moving average of NuPIC (kept so the state matches; it drives nothing)."""
    alpha = np.float32(0.5) if a.s[S_N_LRN_ITERATIONS] < 100 else np.float32(0.1)
    a.sf[SF_AVG_LEARNED_SEQ_LENGTH] = np.float32(
        (1.0 - np.float64(alpha)) * np.float64(a.sf[SF_AVG_LEARNED_SEQ_LENGTH])
        + np.float64(np.float32(alpha * np.float32(seq_length)))
    )


# ----------------------------------------------------------------------------------------------
# one step (§4.3)


@entry_kernel
@njit(cache=True)
def tm_compute(a, cols, learn):
    """One ``Cells4::compute`` with inference on; returns the columns of nonzero confidence."""
    if learn:
        a.s[S_N_LRN_ITERATIONS] += 1
    a.s[S_N_ITERATIONS] += 1
    it = a.s[S_N_LRN_ITERATIONS]
    if learn:
        at_tier = False
        for tier in _DUTY_TIERS:
            if it == tier:
                at_tier = True
        if at_tier:
            for g in range(a.s[S_N_SLOTS]):
                if a.seg_len[g] > 0:
                    _duty_cycle(a.seg_pos, a.seg_dc, a.seg_dc_it, g, it, False, False)
    n_active = np.float32(cols.shape[0])
    if a.sf[SF_AVG_INPUT_DENSITY] == 0.0:
        a.sf[SF_AVG_INPUT_DENSITY] = n_active
    else:
        cool_down = np.float32(0.99)
        a.sf[SF_AVG_INPUT_DENSITY] = np.float32(
            cool_down * a.sf[SF_AVG_INPUT_DENSITY] + (np.float32(1.0) - cool_down) * n_active
        )
    _update_inference_state(a, cols)
    if learn:
        _update_learning_state(a, cols)
    return confident_columns(a)


@njit(cache=True)
def confident_columns(a):
    """Sorted columns whose confidence is nonzero (the TM's top-down output, §5)."""
    n = a.col_count[CONF_T]
    out = np.empty(n, dtype=np.int32)
    m = 0
    for j in range(n):
        c = a.col_list[CONF_T, j]
        if a.col_conf[CONF_T, c] != 0:
            out[m] = c
            m += 1
    out = out[:m]
    out.sort()
    return out


# ----------------------------------------------------------------------------------------------
# checkpoint support


@entry_kernel
@njit(cache=True)
def pack_synapses(a):
    """Synapses in segment order as (sources, permanence table, index into it, missing).

    Permanences take few distinct values (0.21 plus f32 steps of 0.1), so they are stored as an
    index into the sorted table of distinct values. ``missing`` lists the flat positions of
    synapses whose forward entry a v0.5.6 stale free erased (they stay out of activity counts).
    """
    n = a.s[S_N_SLOTS]
    total = 0
    for g in range(n):
        total += a.seg_len[g]
    src = np.empty(total, dtype=np.int32)
    index = np.empty(total, dtype=np.int64)
    table_size = 1 << 16
    keys = np.full(table_size, np.uint32(0xFFFFFFFF), dtype=np.uint32)
    slots = np.empty(table_size, dtype=np.int64)
    values = np.empty(table_size // 2, dtype=np.float32)
    n_values = 0
    perm_bits = a.syn_perm.view(np.uint32)
    flat = 0
    for g in range(n):
        s0 = a.seg_syn_start[g]
        for j in range(s0, s0 + a.seg_len[g]):
            src[flat] = a.syn_src[j]
            p = a.syn_perm[j]
            bits = perm_bits[j]
            h = (np.int64(bits) * 2654435761) & (table_size - 1)
            while keys[h] != bits and keys[h] != np.uint32(0xFFFFFFFF):
                h = (h + 1) & (table_size - 1)
            if keys[h] != bits:
                if n_values == values.shape[0]:
                    raise ValueError("too many distinct permanence values to pack")
                keys[h] = bits
                slots[h] = n_values
                values[n_values] = p
                n_values += 1
            index[flat] = slots[h]
            flat += 1
    order = np.argsort(values[:n_values])
    rank = np.empty(n_values, dtype=np.int64)
    for r in range(n_values):
        rank[order[r]] = r
    for i in range(total):
        index[i] = rank[index[i]]
    return src, values[:n_values][order], index, _missing_forward_entries(a, total)


@njit(cache=True)
def _missing_forward_entries(a, total):
    """Flat positions of synapses without a forward entry: bucket entries by segment (sources
    come out ascending), then merge each bucket with the segment's sorted sources."""
    n = a.s[S_N_SLOTS]
    n_src = a.fwd_start.shape[0]
    counts = np.zeros(n + 1, dtype=np.int64)
    for src in range(n_src):
        s0 = a.fwd_start[src]
        for e in range(s0, s0 + a.fwd_len[src]):
            counts[(a.fwd_pool[e] >> 1) + 1] += 1
    for g in range(n):
        counts[g + 1] += counts[g]
    bucket = np.empty(counts[n], dtype=np.int32)
    fill = counts[:n].copy()
    for src in range(n_src):
        s0 = a.fwd_start[src]
        for e in range(s0, s0 + a.fwd_len[src]):
            g = a.fwd_pool[e] >> 1
            bucket[fill[g]] = src
            fill[g] += 1
    missing = np.empty(total - counts[n], dtype=np.int64)
    m = 0
    flat = 0
    for g in range(n):
        b = counts[g]
        end = counts[g + 1]
        s0 = a.seg_syn_start[g]
        for j in range(s0, s0 + a.seg_len[g]):
            if b < end and bucket[b] == a.syn_src[j]:
                b += 1
            else:
                missing[m] = flat
                m += 1
            flat += 1
    return missing[:m]


@entry_kernel
@njit(cache=True)
def pack_forward_index(a):
    """The forward index as (entries per source cell, every list's entries in list order).

    Stored rather than rebuilt on load: scattering ~500k entries into per-cell lists costs more
    than the whole rest of a load, while copying saved lists back is sequential.
    """
    n_src = a.fwd_start.shape[0]
    total = 0
    for src in range(n_src):
        total += a.fwd_len[src]
    entries = np.empty(total, dtype=np.int32)
    w = 0
    for src in range(n_src):
        s0 = a.fwd_start[src]
        for e in range(s0, s0 + a.fwd_len[src]):
            entries[w] = a.fwd_pool[e]
            w += 1
    return a.fwd_len.copy(), entries


@entry_kernel
@njit(cache=True)
def syn_pool_compact(a, syn_src, syn_perm):
    """Pack the synapses of every segment tight at the front of ``syn_src`` / ``syn_perm``: the
    pools themselves, or larger ones. Released segments give their room back. Segments go in pool
    order, so packing in place only ever copies towards the front. Returns the pool use."""
    n = a.s[S_N_SLOTS]
    live = np.empty(n, dtype=np.int32)
    m = 0
    for g in range(n):
        if a.seg_len[g] > 0:
            live[m] = g
            m += 1
        else:
            a.seg_syn_start[g] = 0
            a.seg_syn_cap[g] = 0
    live = live[:m]
    order = _stable_order_by(live, a.seg_syn_start)
    w = 0
    for i in range(m):
        g = live[order[i]]
        length = a.seg_len[g]
        s0 = a.seg_syn_start[g]
        for j in range(length):
            syn_src[w + j] = a.syn_src[s0 + j]
            syn_perm[w + j] = a.syn_perm[s0 + j]
        a.seg_syn_start[g] = w
        a.seg_syn_cap[g] = length
        w += length
    return w


@entry_kernel
@njit(cache=True)
def unpack_synapses(a, seg_len, src, perm_values, perm_index, missing, fwd_counts, fwd_entries):
    """Inverse of :func:`pack_synapses` and :func:`pack_forward_index`: segments (synapses laid
    out tight), connected counts, stale flags, slot lists and the forward index, each list with
    room to grow."""
    n = seg_len.shape[0]
    conn = a.pf[PF_CONNECTED]
    n_cells = a.cell_slot_start.shape[0]
    slot_counts = np.zeros(n_cells, dtype=np.int64)
    has_entry = np.ones(src.shape[0], dtype=np.uint8)
    for i in range(missing.shape[0]):
        has_entry[missing[i]] = 0
    flat = 0
    w = 0
    for g in range(n):
        slot_counts[a.seg_cell[g]] += 1
        nconn = 0
        stale = 0
        for j in range(w, w + seg_len[g]):
            p = perm_values[perm_index[flat]]
            a.syn_src[j] = src[flat]
            a.syn_perm[j] = p
            if p >= conn:
                nconn += 1
            if has_entry[flat] == 0:
                stale = 1
            flat += 1
        a.seg_len[g] = seg_len[g]
        a.seg_nconn[g] = nconn
        a.seg_stale[g] = stale
        a.seg_syn_start[g] = w
        a.seg_syn_cap[g] = seg_len[g]
        w += seg_len[g]
    a.s[S_SYN_POOL_USED] = w
    a.s[S_SLOT_POOL_USED] = _lay_out_lists(
        a.cell_slot_start, a.cell_slot_len, a.cell_slot_cap, slot_counts
    )
    for g in range(n):
        cell = a.seg_cell[g]
        a.slot_pool[a.cell_slot_start[cell] + a.cell_slot_len[cell]] = g
        a.cell_slot_len[cell] += 1
    a.s[S_FWD_POOL_USED] = _lay_out_lists(a.fwd_start, a.fwd_len, a.fwd_cap, fwd_counts)
    r = 0
    for s in range(n_cells):
        s0 = a.fwd_start[s]
        m = fwd_counts[s]
        for j in range(m):
            a.fwd_pool[s0 + j] = fwd_entries[r + j]
        a.fwd_len[s] = m
        r += m
    a.s[S_FWD_ENTRIES] = fwd_entries.shape[0]
    a.s[S_N_SLOTS] = n
    a.s[S_N_SYNAPSES] = src.shape[0]
    live = 0
    for g in range(n):
        if seg_len[g] > 0:
            live += 1
    a.s[S_N_SEGMENTS] = live


@njit(cache=True)
def _lay_out_lists(start, length, cap, counts):
    """Empty lists with room for ``counts`` entries plus half again; returns the pool use."""
    w = 0
    for lst in range(start.shape[0]):
        n = counts[lst]
        start[lst] = w
        length[lst] = 0
        cap[lst] = n + n // 2 + 4 if n > 0 else 0
        w += cap[lst]
    return w
