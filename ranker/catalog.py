"""The searchable candidates in memory: prepared features, filter columns and BM25 statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ranker.lexicon import LiveLexicon
from ranker.prepared import PreparedCandidate
from ranker.text import phrase_key

if TYPE_CHECKING:
    from ranker.api import RankFilters


def _slots(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


class CandidateCatalog:
    """Prepared features and filter columns of every searchable candidate, in slot arrays.

    Filters are numpy operations over whole columns (no per-request Python loop over the
    candidates); the result is the array of allowed FAISS ids handed to the search. Erased
    slots are reused. Skills are an inverted index (skill -> int32 array of the slots holding
    it), so memory follows the (candidate, skill) pairs held now, not every skill ever seen;
    a skill's entry, like a location's code, goes when its last holder does. `lexicon` holds
    the BM25 statistics of the candidates held, changed with every put and removal. Not
    thread-safe: the pipeline's lock guards it.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._cap = max(1, capacity)
        self._n = 0  # slots ever used (high-water mark); columns are valid up to here
        self._fid = np.full(self._cap, -1, dtype=np.int64)
        self._alive = np.zeros(self._cap, dtype=bool)
        self._years = np.zeros(self._cap, dtype=np.float32)
        self._remote = np.zeros(self._cap, dtype=bool)
        self._relocate = np.zeros(self._cap, dtype=bool)
        self._loc = np.full(self._cap, -1, dtype=np.int32)
        # Arrays are replaced, never changed in place, so a reference taken under the lock stays
        # valid; writes are applied once per batch so a burst costs one pass per skill touched.
        self._skills: dict[str, np.ndarray] = {}
        self._loc_codes: dict[str, int] = {}
        self._loc_refs: list[int] = []  # holders per location code
        self._loc_free: list[int] = []  # codes whose last holder went, reused first
        self._prepared: list[PreparedCandidate | None] = []
        self._slot_by_id: dict[str, int] = {}
        self._slot_by_fid: dict[int, int] = {}
        self._free: list[int] = []
        self.lexicon = LiveLexicon()
        """Document frequencies and lengths of the candidates held now (BM25 at serving)."""

    def __len__(self) -> int:
        return len(self._slot_by_id)

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._slot_by_id

    @property
    def distinct_skills(self) -> int:
        """Skills held by at least one candidate now."""
        return len(self._skills)

    @property
    def distinct_locations(self) -> int:
        """Locations of at least one candidate now."""
        return len(self._loc_codes)

    def get(self, candidate_id: str) -> PreparedCandidate | None:
        slot = self._slot_by_id.get(candidate_id)
        return None if slot is None else self._prepared[slot]

    def faiss_id(self, candidate_id: str) -> int | None:
        slot = self._slot_by_id.get(candidate_id)
        return None if slot is None else int(self._fid[slot])

    def _grow(self) -> None:
        new = self._cap * 2

        def grown(a: np.ndarray, fill: object) -> np.ndarray:
            out = np.full(new, fill, dtype=a.dtype)
            out[: self._cap] = a
            return out

        self._fid = grown(self._fid, -1)
        self._alive = grown(self._alive, False)
        self._years = grown(self._years, 0)
        self._remote = grown(self._remote, False)
        self._relocate = grown(self._relocate, False)
        self._loc = grown(self._loc, -1)
        self._cap = new

    # -- location codes, reference-counted ------------------------------------------------
    def _loc_acquire(self, location: str) -> int:
        loc = phrase_key(location)
        if not loc:
            return -1
        code = self._loc_codes.get(loc)
        if code is None:
            if self._loc_free:
                code = self._loc_free.pop()
            else:
                code = len(self._loc_refs)
                self._loc_refs.append(0)
            self._loc_codes[loc] = code
        self._loc_refs[code] += 1
        return code

    def _loc_release(self, code: int, location: str) -> None:
        if code < 0:
            return
        self._loc_refs[code] -= 1
        if self._loc_refs[code] == 0:
            del self._loc_codes[phrase_key(location)]
            self._loc_free.append(code)

    # -- changes --------------------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[int, PreparedCandidate]]) -> list[bool]:
        """Add or replace candidates (FAISS id, prepared); True for each that was new."""
        # Net change per (skill, slot): +1 gained, -1 lost. Netting lets an erased slot be
        # reused within the batch, and the batch then costs one pass per skill touched.
        delta: dict[str, dict[int, int]] = {}
        replaced: list[PreparedCandidate] = []
        created = [self._put(fid, pc, delta, replaced) for fid, pc in items]
        self._apply(delta)
        # Added before the replaced are taken away: no count goes below zero on the way.
        self.lexicon.add([pc for _, pc in items])
        self.lexicon.remove(replaced)
        return created

    def remove_many(self, candidate_ids: Sequence[str]) -> list[int | None]:
        """Forget candidates; each one's FAISS id, or None when it was not here."""
        delta: dict[str, dict[int, int]] = {}
        removed: list[PreparedCandidate] = []
        fids = [self._remove(cid, delta, removed) for cid in candidate_ids]
        self._apply(delta)
        self.lexicon.remove(removed)
        return fids

    @staticmethod
    def _note(delta: dict[str, dict[int, int]], skills: Sequence[str], slot: int, d: int) -> None:
        # Keyed like the features compare skills (`phrase_key`), so a filter and the reasons agree.
        for s in {phrase_key(x) for x in skills}:
            per = delta.setdefault(s, {})
            per[slot] = per.get(slot, 0) + d

    def _put(
        self,
        fid: int,
        pc: PreparedCandidate,
        delta: dict[str, dict[int, int]],
        replaced: list[PreparedCandidate],
    ) -> bool:
        slot = self._slot_by_id.get(pc.id)
        created = slot is None
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                if self._n == self._cap:
                    self._grow()
                slot = self._n
                self._n += 1
                self._prepared.append(None)
        else:
            old = self._prepared[slot]
            if old is not None:
                replaced.append(old)
                self._note(delta, old.candidate.skills, slot, -1)
                self._loc_release(int(self._loc[slot]), old.candidate.location)
            self._slot_by_fid.pop(int(self._fid[slot]), None)
        c = pc.candidate
        self._fid[slot] = fid
        self._alive[slot] = True
        self._years[slot] = c.years_experience
        self._remote[slot] = c.remote_ok
        self._relocate[slot] = c.willing_to_relocate
        self._loc[slot] = self._loc_acquire(c.location)
        self._note(delta, c.skills, slot, +1)
        self._prepared[slot] = pc
        self._slot_by_id[pc.id] = slot
        self._slot_by_fid[fid] = slot
        return created

    def _remove(
        self, candidate_id: str, delta: dict[str, dict[int, int]], removed: list[PreparedCandidate]
    ) -> int | None:
        slot = self._slot_by_id.pop(candidate_id, None)
        if slot is None:
            return None
        pc = self._prepared[slot]
        if pc is not None:
            removed.append(pc)
            self._note(delta, pc.candidate.skills, slot, -1)
            self._loc_release(int(self._loc[slot]), pc.candidate.location)
        fid = int(self._fid[slot])
        self._slot_by_fid.pop(fid, None)
        self._alive[slot] = False
        self._fid[slot] = -1
        self._loc[slot] = -1
        self._prepared[slot] = None
        self._free.append(slot)
        return fid

    def _apply(self, delta: dict[str, dict[int, int]]) -> None:
        for skill, per_slot in delta.items():
            gained = [slot for slot, d in per_slot.items() if d > 0]
            lost = [slot for slot, d in per_slot.items() if d < 0]
            if not gained and not lost:
                continue
            held = self._skills.get(skill)
            if held is None:
                held = np.zeros(0, dtype=np.int32)
            if lost:
                held = held[~np.isin(held, _slots(lost))]
            if gained:
                held = np.concatenate([held, _slots(gained)])
            if len(held):
                self._skills[skill] = held
            else:
                self._skills.pop(skill, None)

    # -- queries --------------------------------------------------------------------------
    def allowed(self, f: RankFilters) -> np.ndarray | None:
        """FAISS ids passing the filters; None when there is no filter (search everything)."""
        if f.empty:
            return None
        n = self._n
        mask = self._alive[:n].copy()
        if f.location_clause:
            where = np.zeros(n, dtype=bool)
            codes = [self._loc_codes[loc] for loc in f.locations if loc in self._loc_codes]
            if codes:
                where |= np.isin(self._loc[:n], np.asarray(codes, dtype=np.int32))
            if f.include_remote:
                where |= self._remote[:n]
            if f.include_relocating:
                where |= self._relocate[:n]
            mask &= where
        if f.remote_only:
            mask &= self._remote[:n]
        if f.min_years is not None and f.min_years > 0:
            mask &= self._years[:n] >= f.min_years
        # Rarest skill first: an empty intersection is found with the least work.
        held = [self._skills.get(s) for s in f.must_have_skills]
        for slots in sorted(held, key=lambda a: -1 if a is None else len(a)):
            if slots is None:
                return np.zeros(0, dtype=np.int64)
            has = np.zeros(n, dtype=bool)
            has[slots] = True
            mask &= has
        return self._fid[:n][mask]

    def lookup(self, fids: np.ndarray) -> tuple[list[PreparedCandidate], np.ndarray]:
        """The candidates of `fids` and a mask of which fids were found (order kept)."""
        found: list[PreparedCandidate] = []
        keep = np.zeros(len(fids), dtype=bool)
        for i, fid in enumerate(fids.tolist()):
            slot = self._slot_by_fid.get(fid)
            pc = None if slot is None else self._prepared[slot]
            if pc is not None:
                found.append(pc)
                keep[i] = True
        return found, keep
