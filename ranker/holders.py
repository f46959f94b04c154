"""Which slots hold a key (a skill's or a location's hash): the catalog's inverted indexes, which
let a filter read only the holders of what it names instead of passing over every slot.

An index maps a key to an int32 array of slots. Arrays are replaced, never changed in place, so a
reference taken under the catalog's lock stays valid while writes go on; a batch of writes is
collected as a `Delta` and applied at once, one pass per key touched.
"""

from __future__ import annotations

import numpy as np

Delta = dict[int, dict[int, int]]
"""Changes to an index (key -> slot -> +1 / -1), applied at once by `apply`."""


def note(delta: Delta, keys: np.ndarray, slot: int, d: int) -> None:
    """Count `slot` in (d = +1) or out (-1) of the holders of `keys` (0: no key)."""
    for key in keys.tolist():
        if key:
            per = delta.setdefault(key, {})
            per[slot] = per.get(slot, 0) + d


def apply(index: dict[int, np.ndarray], delta: Delta) -> None:
    """Apply a batch's changes to `index` (a key with no holder left is dropped)."""
    for key, per_slot in delta.items():
        gained = [slot for slot, d in per_slot.items() if d > 0]
        lost = [slot for slot, d in per_slot.items() if d < 0]
        if not gained and not lost:
            continue
        held = index.get(key)
        if held is None:
            held = np.zeros(0, dtype=np.int32)
        if lost:
            held = held[~np.isin(held, np.asarray(lost, dtype=np.int32))]
        if gained:
            held = np.concatenate([held, np.asarray(gained, dtype=np.int32)])
        if len(held):
            index[key] = held
        else:
            index.pop(key, None)


def grouped(slots: np.ndarray, keys: np.ndarray) -> dict[int, np.ndarray]:
    """An index built at once: the `slots` (ascending in each key) of each nonzero key."""
    keep = keys != 0
    slots, keys = slots[keep], keys[keep]
    order = np.argsort(keys, kind="stable")
    unique, starts = np.unique(keys[order], return_index=True)
    parts = np.split(slots[order].astype(np.int32), starts[1:])
    return dict(zip(unique.tolist(), parts, strict=True))
