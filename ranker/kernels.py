"""Compiled loops (numba) for the per-candidate work of a ranking: the feature columns, the
split of the catalog's blobs into term and tag arrays, the filters' pass over the catalog, and
the reads of the retrieved candidates' blobs from the catalog's file.

Written as loops because numpy needs dozens of whole-array passes (and temporaries) for what one
pass over each candidate does: at 500 candidates of CV length, the feature columns cost ~1.4 ms
in numpy and ~0.55 ms here (measured in-process at 10^5 candidates). numba compiles them on first use and caches the
machine code next to this file (`cache=True`), so only a fresh install pays the compilation, a
second or two; `warm_up` does it before a service answers (and where no cache can be written,
at every start). `nogil`: rankings on other worker threads go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, types

from ranker.prepared import Scalar


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`njit` with its machine code cached on disk when numba finds a writable place (next to
    this file, else the user's cache folder); where none is (a read-only install run by a user
    without a home), compiled at every start instead of failing to import."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return njit(nogil=True, **options)(fn)

    return wrap


_TERMS, _CHUNKS = int(Scalar.TERMS), int(Scalar.CHUNKS)
_SKILLS, _TITLE, _YEARS = int(Scalar.SKILLS), int(Scalar.TITLE), int(Scalar.YEARS)
_REMOTE, _RELOCATE = int(Scalar.REMOTE), int(Scalar.RELOCATE)
_SENIORITY, _DOC_LEN = int(Scalar.SENIORITY), int(Scalar.DOC_LEN)

ABSOLUTE_COLUMNS: tuple[str, ...] = (
    "dense_cosine",
    "chunk_max_cosine",
    "bm25",
    "bm25_required",
    "required_coverage",
    "required_missing",
    "nice_coverage",
    "required_text_coverage",
    "years_experience",
    "experience_gap",
    "under_min_years",
    "same_location",
    "remote_fit",
    "relocation_needed",
    "location_fit",
    "title_overlap",
    "seniority_gap",
    "skills_listed",
    "cv_log_length",
)
"""The columns `absolute_columns` writes, in the order of its `cols` argument (the features
module says what each means)."""


@_compiled(fastmath=True)
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    # fastmath lets the reduction use SIMD lanes; each row is summed alone, so a candidate's
    # cosine does not depend on which other candidates are in the batch.
    acc = np.float32(0.0)
    for d in range(a.shape[0]):
        acc += a[d] * b[d]
    return acc


@_compiled()
def _query_table(q: np.ndarray) -> np.ndarray:
    """Open-addressing table of the query's term hashes: slot -> index in `q` + 1 (0: empty),
    at most 1/8 full, so a CV term not in the query usually meets an empty slot at once."""
    size = 1024
    while size < 8 * q.shape[0]:
        size *= 2
    mask = np.uint64(size - 1)
    table = np.zeros(size, dtype=np.int32)
    for j in range(q.shape[0]):
        k = q[j] & mask
        while table[k] != 0:
            k = (k + np.uint64(1)) & mask
        table[k] = j + 1
    return table


@_compiled()
def _find(table: np.ndarray, q: np.ndarray, h: np.uint64) -> int:
    """Index of `h` in `q`, or -1 (exact: a shared slot is resolved by comparing hashes)."""
    mask = np.uint64(table.shape[0] - 1)
    k = h & mask
    while table[k] != 0:
        j = table[k] - 1
        if q[j] == h:
            return j
        k = (k + np.uint64(1)) & mask
    return -1


@_compiled()
def _count_in(values: np.ndarray, start: int, stop: int, wanted: np.ndarray) -> int:
    """How many of `values[start:stop]` are in `wanted` (a handful of skills: a scan is fastest)."""
    n = 0
    for g in range(start, stop):
        for k in range(wanted.shape[0]):
            if wanted[k] == values[g]:
                n += 1
                break
    return n


@_compiled()
def absolute_columns(
    x: np.ndarray,
    cols: np.ndarray,
    vectors: np.ndarray,
    posting_vector: np.ndarray,
    term_hashes: np.ndarray,
    term_counts: np.ndarray,
    tags: np.ndarray,
    scalars: np.ndarray,
    query: np.ndarray,
    idf: np.ndarray,
    in_text: np.ndarray,
    in_required: np.ndarray,
    slot_words: np.ndarray,
    slot_starts: np.ndarray,
    required: np.ndarray,
    nice: np.ndarray,
    title: np.ndarray,
    location_hash: np.uint64,
    posting_numbers: np.ndarray,
    bm25: np.ndarray,
) -> None:
    """Write the `ABSOLUTE_COLUMNS` of every candidate into `x[:, cols]`.

    Candidates are the packed arrays' (rows of `scalars`; their vector rows, terms and tags in
    turn). The posting: its unit vector; its sorted query term hashes with their idf and
    whether each is in the text / a required skill's word; the required skills' words as
    indices into the query (`slot_words`, split at `slot_starts`); required, nice-to-have and
    title hashes; its location's hash (0: it names none); `posting_numbers` = (min years,
    remote, seniority); and `bm25` = (k1, b, avgdl, bound of the text query, bound of the
    required query).
    """
    n = scalars.shape[0]
    table = _query_table(query)
    present = np.zeros(query.shape[0], dtype=np.bool_)
    n_slots = slot_starts.shape[0] - 1
    min_years, remote, seniority = posting_numbers[0], posting_numbers[1] > 0, posting_numbers[2]
    k1, b, avgdl, bound_text, bound_required = bm25[0], bm25[1], bm25[2], bm25[3], bm25[4]
    row = 0
    t0 = 0
    g0 = 0
    for i in range(n):
        # Dense: the doc row's cosine, and the best of the chunk rows'.
        rows = int(scalars[i, _CHUNKS]) + 1
        x[i, cols[0]] = _dot(vectors[row], posting_vector)
        best = -np.inf
        for r in range(1, rows):
            best = max(best, float(_dot(vectors[row + r], posting_vector)))
        x[i, cols[1]] = best
        row += rows

        # Lexical: BM25 of the text query and of the required words, and which words occur.
        n_terms = int(scalars[i, _TERMS])
        norm = k1 * (1.0 - b + b * scalars[i, _DOC_LEN] / avgdl)
        text_score = 0.0
        required_score = 0.0
        present[:] = False
        for t in range(t0, t0 + n_terms):
            j = _find(table, query, term_hashes[t])
            if j >= 0:
                tf = np.float64(term_counts[t])
                contrib = idf[j] * tf * (k1 + 1.0) / (tf + norm)
                if in_text[j]:
                    text_score += contrib
                if in_required[j]:
                    required_score += contrib
                present[j] = True
        t0 += n_terms
        if bound_text > 0:
            x[i, cols[2]] = text_score / bound_text
        if bound_required > 0:
            x[i, cols[3]] = required_score / bound_required
        if n_slots > 0:
            mentioned = 0
            for s in range(n_slots):
                every = True
                for w in range(slot_starts[s], slot_starts[s + 1]):
                    every = every and present[slot_words[w]]
                mentioned += every
            x[i, cols[7]] = mentioned / n_slots

        # Tags: the structured skills, then the title words, then the location.
        n_skills = int(scalars[i, _SKILLS])
        n_title = int(scalars[i, _TITLE])
        matched = _count_in(tags, g0, g0 + n_skills, required)
        n_required = required.shape[0]
        x[i, cols[4]] = matched / n_required if n_required else 1.0
        x[i, cols[5]] = n_required - matched
        if nice.shape[0]:
            x[i, cols[6]] = _count_in(tags, g0, g0 + n_skills, nice) / nice.shape[0]
        if title.shape[0]:
            common = _count_in(tags, g0 + n_skills, g0 + n_skills + n_title, title)
            union = scalars[i, _TITLE] + title.shape[0] - common
            x[i, cols[15]] = common / max(union, 1.0)
        location = tags[g0 + n_skills + n_title]
        g0 += n_skills + n_title + 1
        x[i, cols[17]] = scalars[i, _SKILLS]

        years = scalars[i, _YEARS]
        x[i, cols[8]] = min(max(years, 0.0), 40.0)
        x[i, cols[9]] = min(max(years - min_years, -10.0), 20.0)
        x[i, cols[10]] = years < min_years

        remote_fit = scalars[i, _REMOTE] > 0 and remote
        x[i, cols[12]] = remote_fit
        if location_hash != 0:
            same = location == location_hash
            relocate = (not same) and scalars[i, _RELOCATE] > 0 and not remote
            x[i, cols[11]] = same
            x[i, cols[13]] = relocate
            x[i, cols[14]] = 1.0 if (same or remote_fit) else (0.5 if relocate else 0.0)
        elif not remote:
            # On site, but where is not said: no location requirement anyone could miss.
            x[i, cols[14]] = 1.0
        else:
            x[i, cols[14]] = remote_fit
        x[i, cols[16]] = scalars[i, _SENIORITY] - seniority
        x[i, cols[18]] = np.log1p(scalars[i, _DOC_LEN])


@_compiled()
def split_heads(
    head: np.ndarray, starts: np.ndarray, terms: np.ndarray, tags: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The term hashes (uint64), term counts (float32) and tags (uint64) of blobs whose heads
    were read back to back into `head` (bytes), blob i's from byte `starts[i]`: its `terms[i]`
    hashes, then as many counts (padded to 8 bytes), then its `tags[i]` tags."""
    hashes = np.empty(terms.sum(), dtype=np.uint64)
    counts = np.empty(terms.sum(), dtype=np.float32)
    out_tags = np.empty(tags.sum(), dtype=np.uint64)
    u64, f32 = head.view(np.uint64), head.view(np.float32)
    th = 0
    tg = 0
    for i in range(starts.shape[0]):
        t, at = terms[i], starts[i]
        hashes[th : th + t] = u64[at // 8 : at // 8 + t]
        counts[th : th + t] = f32[at // 4 + 2 * t : at // 4 + 3 * t]
        first_tag = (at + 12 * t + 4 * (t % 2)) // 8
        out_tags[tg : tg + tags[i]] = u64[first_tag : first_tag + tags[i]]
        th += t
        tg += tags[i]
    return hashes, counts, out_tags


@_compiled()
def passing_fids(
    fid: np.ndarray,
    alive: np.ndarray,
    loc: np.ndarray,
    years: np.ndarray,
    flags: np.ndarray,
    n: int,
    loc_wanted: np.ndarray,
    loc_clause: bool,
    remote_in: bool,
    relocating_in: bool,
    remote_only: bool,
    min_years: float,
    held: np.ndarray,
    among: np.ndarray,
) -> np.ndarray:
    """FAISS ids of the live slots below `n` that pass a ranking's filters, in the order tested.

    One pass over contiguous columns: the location code (`loc_wanted[code + 1]` says whether
    it is asked for; code -1, no location, reads `loc_wanted[0]`, False), the years, the flags (bit 0 open to remote, bit 1 to relocation). With
    `loc_clause` a slot passes on its location or, when asked for, its remote or relocation
    flag; `remote_only` requires the remote flag; a `min_years` above 0 the years (at least that
    many); `held` (empty: no skill asked for) marks the
    slots holding every required skill. `among` lists the slots to test (int32), or is `[-1]`
    for every slot below `n`. Numpy needs a masked pass and a temporary per clause,
    over a strided column of the scalars for the years: ~6-12 ms at 10^6 candidates.
    """
    every = among.shape[0] == 1 and among[0] < 0
    m = n if every else among.shape[0]
    # Branch-free: every slot is written and the count moves on only when it passes, so a
    # filter passing a random 10% costs no mispredicted branch per slot (~3x faster here).
    out = np.empty(m + 1, dtype=np.int64)
    k = 0
    use_held = held.shape[0] > 0
    check_years = min_years > 0
    top = loc_wanted.shape[0] - 1
    for i in range(m):
        s = i if every else among[i]
        f = flags[s]
        ok = alive[s]
        if loc_clause:
            where = loc_wanted[min(loc[s] + 1, top)]
            where |= remote_in & ((f & 1) == 1)
            where |= relocating_in & ((f & 2) == 2)
            ok &= where
        ok &= (not remote_only) | ((f & 1) == 1)
        ok &= (not check_years) | (years[s] >= min_years)
        if use_held:
            ok &= held[s]
        out[k] = fid[s]
        k += ok
    return out[:k]


@_compiled()
def id_bitmap(ids: np.ndarray) -> np.ndarray:
    """A little-endian bitmap (bit i of byte i // 8 set for id i) of non-negative `ids`, as FAISS's
    `IDSelectorBitmap` reads it; one byte past the largest id."""
    top = 0
    for i in ids:
        top = max(top, i)
    bits = np.zeros(top // 8 + 1, dtype=np.uint8)
    for i in ids:
        bits[i >> 3] |= np.uint8(1 << (i & 7))
    return bits


_PREADV2: Any = types.ExternalFunction(
    "preadv2", types.int64(types.int32, types.uint64, types.int32, types.int64, types.int32)
)
"""libc's `ssize_t preadv2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int
flags)`, called from compiled code by its symbol (so the kernel using it is cached like the
others; a ctypes pointer would not be), the iovec pointer passed as a 64-bit integer: 64-bit
POSIX only, as numba and this service are."""

_FADVISE: Any = types.ExternalFunction(
    "posix_fadvise", types.int32(types.int32, types.int64, types.int64, types.int32)
)
"""libc's `int posix_fadvise(int fd, off_t offset, off_t len, int advice)`."""

RWF_NOWAIT = 8
"""preadv2's flag: fail (EAGAIN) or return short rather than wait for the disk (Linux)."""
_FADV_WILLNEED = 3


@_compiled()
def read_runs(
    fd: int,
    first: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    block: int,
    out_head: np.ndarray,
    out_tail: np.ndarray,
    nowait: int = RWF_NOWAIT,
) -> int:
    """Read runs of `block`-byte blocks of file `fd`: the `head[i]` blocks from block `first[i]`
    into `out_head`, back to back, and the `tail[i]` blocks after them into `out_tail`, one
    `preadv2` per run straight into the two arrays. -1 when every run was read whole, else the
    index of the first run that was not (an error, or short at the end of the file: the caller
    reads it again to say which).

    Two passes, so runs missing from the page cache are read from the disk in parallel rather
    than one after another: the first reads every run the page cache holds without waiting
    (`nowait`: RWF_NOWAIT; 0 where the file system refuses it, and every run is then read in
    the first pass); the runs it could not read are all asked of the disk at once
    (POSIX_FADV_WILLNEED starts their reads and does not wait), then read, waiting for each.
    At 10^6 candidates the catalog's blobs file is ~10 GB: a ranking that found ~100 of its
    500 runs evicted waited ~1 ms for each in turn.

    Written by hand because `os.preadv` costs, per run, Python's call and two memoryview slices
    with the GIL held between system calls: for the 500 runs of a ranking (~9 KB each, cached
    pages) 2.2 ms that way, 1.4 ms here, with the GIL released throughout (measured on this
    machine's 2 cores)."""
    n = first.shape[0]
    iov = np.empty(4, dtype=np.uint64)  # struct iovec[2]: (base, length) twice
    missed = np.empty(n, dtype=np.int64)
    missed_at = np.empty((n, 2), dtype=np.uint64)
    k = 0
    at_head, at_tail = out_head.ctypes.data, out_tail.ctypes.data
    for i in range(n):
        h, t = head[i] * block, tail[i] * block
        iov[0], iov[1], iov[2], iov[3] = at_head, h, at_tail, t
        got = _PREADV2(
            np.int32(fd),
            np.uint64(iov.ctypes.data),
            np.int32(2),
            first[i] * block,
            np.int32(nowait),
        )
        if got != h + t:
            if nowait == 0:
                return i
            missed[k], missed_at[k, 0], missed_at[k, 1] = i, at_head, at_tail
            k += 1
        at_head += h
        at_tail += t
    for j in range(k):
        i = missed[j]
        _FADVISE(
            np.int32(fd), first[i] * block, (head[i] + tail[i]) * block, np.int32(_FADV_WILLNEED)
        )
    for j in range(k):
        i = missed[j]
        h, t = head[i] * block, tail[i] * block
        iov[0], iov[1], iov[2], iov[3] = missed_at[j, 0], h, missed_at[j, 1], t
        got = _PREADV2(
            np.int32(fd), np.uint64(iov.ctypes.data), np.int32(2), first[i] * block, np.int32(0)
        )
        if got != h + t:
            return i
    return -1


def warm_up() -> None:
    """Compile (or load from the cache) every kernel now, on a tiny input of the argument types
    rankings pass, so the first ranking does not pay for it."""
    u64, f32, f64, i64 = np.uint64, np.float32, np.float64, np.int64
    scalars = np.zeros((1, len(Scalar)), dtype=f64)
    absolute_columns(
        np.zeros((1, len(ABSOLUTE_COLUMNS)), dtype=f32),
        np.arange(len(ABSOLUTE_COLUMNS), dtype=i64),
        np.zeros((1, 4), dtype=f32),
        np.zeros(4, dtype=f32),
        np.zeros(0, dtype=u64),
        np.zeros(0, dtype=f32),
        np.zeros(1, dtype=u64),
        scalars,
        np.zeros(1, dtype=u64),
        np.zeros(1, dtype=f64),
        np.zeros(1, dtype=np.bool_),
        np.zeros(1, dtype=np.bool_),
        np.zeros(0, dtype=i64),
        np.zeros(1, dtype=i64),
        np.zeros(0, dtype=u64),
        np.zeros(0, dtype=u64),
        np.zeros(0, dtype=u64),
        u64(0),
        np.zeros(3, dtype=f64),
        np.ones(5, dtype=f64),
    )
    split_heads(np.zeros(64, dtype=np.uint8), np.zeros(1, i64), np.ones(1, i64), np.ones(1, i64))
    passing_fids(
        np.zeros(1, dtype=i64),
        np.ones(1, dtype=np.bool_),
        np.zeros(1, dtype=np.int32),
        np.zeros(1, dtype=f64),
        np.zeros(1, dtype=np.uint8),
        1,
        np.zeros(1, dtype=np.bool_),
        True,
        False,
        False,
        False,
        0.0,
        np.zeros(0, dtype=np.bool_),
        np.full(1, -1, dtype=np.int32),
    )
    id_bitmap(np.zeros(1, dtype=i64))
    empty = np.zeros(0, dtype=i64)
    read_runs(-1, empty, empty, empty, 1, np.zeros(0, np.uint8), np.zeros(0, np.uint8))
