"""Reading and editing the structure of a TIFF file in place: IFDs, tag entries and their values.

A small parser of its own (classic TIFF, BigTIFF, and NDPI's classic entries with 8-byte IFD
offsets, whose low 4 bytes come first), so that it keeps working on files that tifffile refuses
after an earlier mutation. Nothing here validates anything: it edits what is there.

>>> import io, tifffile, numpy as np
>>> buf = io.BytesIO(); tifffile.imwrite(buf, np.zeros((8, 8), np.uint8), metadata=None)
>>> t = Tiff(bytearray(buf.getvalue()))
>>> t.ifds[0].entry(256).values(t)
[8]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ITEM_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
"""Bytes per value item of each TIFF data type."""
_FORMAT = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I", 16: "Q", 17: "q", 18: "Q"}
MAX_IFDS = 256


@dataclass
class Entry:
    """One tag entry of an IFD."""

    code: int
    dtype: int
    count: int
    pos: int
    """Where the 12- (classic) or 20-byte (BigTIFF) entry starts."""
    value_pos: int
    """Where the value is: inside the entry, or where its offset points."""

    def values(self, tiff: Tiff, limit: int = 4096) -> list[int | float]:
        """The first ``limit`` numeric values ([] for a type without a struct format, or past EOF)."""
        fmt = _FORMAT.get(self.dtype)
        if self.dtype in (5, 10):  # rationals: numerator / denominator pairs
            raw = tiff.unpack(("I" if self.dtype == 5 else "i") * 2 * min(self.count, limit), self.value_pos)
            return [raw[i] / raw[i + 1] if raw[i + 1] else float("inf") for i in range(0, len(raw), 2)]
        if fmt is None:
            return []
        return list(tiff.unpack(fmt * min(self.count, limit), self.value_pos))


@dataclass
class Ifd:
    """One image file directory: its position, its entries and where its next-IFD offset sits."""

    pos: int
    entries: list[Entry] = field(default_factory=list)
    next_pos: int = 0

    def entry(self, code: int) -> Entry | None:
        return next((e for e in self.entries if e.code == code), None)


class Tiff:
    """A TIFF file's bytes and its IFDs (the main chain and every SubIFD), editable in place."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"
        version = self.unpack("H", 2)[0] if len(data) >= 4 else 42
        self.big = version == 43
        self.ifds: list[Ifd] = []
        first = self.unpack("Q", 8)[0] if self.big else self.unpack("I", 4)[0] if len(data) >= 8 else 0
        self._walk(first)

    def unpack(self, fmt: str, pos: int) -> tuple[int | float, ...]:
        """Values at ``pos``; () where the bytes run past the end of the file."""
        size = struct.calcsize(self.order + fmt)
        if pos < 0 or pos + size > len(self.data):
            return ()
        return struct.unpack_from(self.order + fmt, self.data, pos)

    def pack(self, fmt: str, pos: int, *values: int | float) -> None:
        """Write ``values`` at ``pos`` (ignored past the end of the file)."""
        size = struct.calcsize(self.order + fmt)
        if pos >= 0 and pos + size <= len(self.data):
            struct.pack_into(self.order + fmt, self.data, pos, *values)

    def _walk(self, offset: int) -> None:
        todo, seen = [offset], set()
        while todo and len(self.ifds) < MAX_IFDS:
            pos = todo.pop(0)
            if not pos or pos in seen or pos >= len(self.data):
                continue
            seen.add(pos)
            ifd = self._read_ifd(pos)
            if ifd is None:
                continue
            self.ifds.append(ifd)
            nxt = self.unpack("Q" if self.big else "I", ifd.next_pos)
            todo.insert(0, int(nxt[0]) if nxt else 0)
            sub = ifd.entry(330)
            if sub is not None:
                todo.extend(int(v) for v in sub.values(self, 64) if isinstance(v, int))

    def _read_ifd(self, pos: int) -> Ifd | None:
        n_fmt, entry_size, inline = ("Q", 20, 8) if self.big else ("H", 12, 4)
        n = self.unpack(n_fmt, pos)
        if not n or int(n[0]) > 4096:
            return None
        start = pos + struct.calcsize(n_fmt)
        ifd = Ifd(pos, next_pos=start + int(n[0]) * entry_size)
        for i in range(int(n[0])):
            at = start + i * entry_size
            head = self.unpack("HHQ" if self.big else "HHI", at)
            if not head:
                break
            code, dtype, count = (int(v) for v in head)
            size = ITEM_SIZE.get(dtype, 1) * count
            value_field = at + (12 if self.big else 8)
            if size <= inline:
                value_pos = value_field
            else:
                pointer = self.unpack("Q" if self.big else "I", value_field)
                value_pos = int(pointer[0]) if pointer else -1
            ifd.entries.append(Entry(code, dtype, count, at, value_pos))
        return ifd

    # --- edits ---------------------------------------------------------------------------------

    def entries(self, code: int) -> list[tuple[Ifd, Entry]]:
        """Every (IFD, entry) with tag ``code``."""
        return [(ifd, e) for ifd in self.ifds for e in ifd.entries if e.code == code]

    def set_value(self, entry: Entry, index: int, value: int | float) -> None:
        """Overwrite item ``index`` of an entry's value, in the entry's own type (clipped to it)."""
        fmt = _FORMAT.get(entry.dtype)
        if entry.dtype in (5, 10):
            num, den = (int(value), 1) if float(value).is_integer() else (int(value * 1000), 1000)
            lo, top = (0, 2**32 - 1) if entry.dtype == 5 else (-(2**31) + 1, 2**31 - 1)
            self.pack("II" if entry.dtype == 5 else "ii", entry.value_pos + 8 * index, max(lo, min(top, num)), den)
            return
        if fmt is None:
            return
        if fmt in "fd":
            self.pack(fmt, entry.value_pos + ITEM_SIZE[entry.dtype] * index, float(value))
            return
        bits = 8 * ITEM_SIZE[entry.dtype]
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt in "bhiq" else (0, 2**bits - 1)
        self.pack(fmt, entry.value_pos + ITEM_SIZE[entry.dtype] * index, max(lo, min(hi, int(value))))

    def set_header(self, entry: Entry, *, code: int | None = None, dtype: int | None = None,
                   count: int | None = None) -> None:
        """Rewrite the code, type or count of an entry (the value field is left as it is)."""
        if code is not None:
            self.pack("H", entry.pos, code)
        if dtype is not None:
            self.pack("H", entry.pos + 2, dtype)
        if count is not None:
            self.pack("Q" if self.big else "I", entry.pos + 4, count)

    def replace_value(self, entry: Entry, raw: bytes, dtype: int | None = None) -> None:
        """Give an entry a new value: ``raw`` bytes appended at the end of the file (or inline if
        they fit), the entry's count (and type) updated to match."""
        inline = 8 if self.big else 4
        dtype = entry.dtype if dtype is None else dtype
        count = len(raw) // ITEM_SIZE.get(dtype, 1)
        value_field = entry.pos + (12 if self.big else 8)
        if len(raw) <= inline:
            self.data[value_field: value_field + inline] = raw.ljust(inline, b"\0")
        else:
            if len(self.data) % 2:
                self.data += b"\0"
            pointer = len(self.data)
            self.data += raw
            self.pack("Q" if self.big else "I", value_field, pointer)
        self.set_header(entry, dtype=dtype, count=count)

    def set_next(self, ifd: Ifd, offset: int) -> None:
        """Point an IFD's next-IFD offset at ``offset``."""
        self.pack("Q" if self.big else "I", ifd.next_pos, offset)

    def text(self, entry: Entry) -> bytes:
        """The raw bytes of an ASCII (or UNDEFINED) value."""
        if entry.value_pos < 0:
            return b""
        return bytes(self.data[entry.value_pos: entry.value_pos + entry.count])
