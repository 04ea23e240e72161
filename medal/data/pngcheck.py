"""A cheap integrity check of a PNG file: walk its chunks, verify every CRC and the closing IEND, decode nothing.

A truncated download or a flipped byte is what breaks a data set on disk; both show in the chunk structure
(a chunk that runs past the end of the file, a CRC that does not match, no IEND) without inflating the
pixels, so `medal check-data` runs this on every image by default at the cost of reading the file once.
It also catches a corrupted IDAT chunk whose zlib stream still inflates, which a full decode by Pillow
(it does not verify IDAT CRCs) lets through. The full decode stays the option `data.check_images=true`.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_READ = 1 << 20  # bytes per read while CRC-ing a long chunk


def png_problem(path: str | Path) -> str | None:
    """Why the PNG at `path` is damaged (one short phrase naming the chunk and byte offset), or None if whole.

    Examples:
        >>> import io, tempfile
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("L", (8, 8), 128).save(folder / "ok.png")
        >>> png_problem(folder / "ok.png") is None
        True
        >>> data = (folder / "ok.png").read_bytes()
        >>> _ = (folder / "cut.png").write_bytes(data[: len(data) - 20])
        >>> png_problem(folder / "cut.png")
        'truncated: the file ends inside chunk IDAT (at byte 33)'
        >>> _ = (folder / "other.png").write_bytes(b"GIF89a....")
        >>> png_problem(folder / "other.png")
        'not a PNG file (no PNG signature)'
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(len(SIGNATURE)) != SIGNATURE:
                return "not a PNG file (no PNG signature)"
            return _walk_chunks(handle)
    except OSError as err:
        return f"cannot read the file ({err.strerror or err})"


def _walk_chunks(handle) -> str | None:  # noqa: ANN001 - a binary file object
    while True:
        offset = handle.tell()
        header = handle.read(8)
        if len(header) < 8:
            return f"truncated: no IEND chunk (the file ends at byte {offset})"
        length, kind = struct.unpack(">I4s", header)
        name = kind.decode("latin-1")
        if not kind.isalpha():
            return f"corrupt chunk header at byte {offset}"
        crc, left = zlib.crc32(kind), length
        while left:
            block = handle.read(min(left, _READ))
            if not block:
                return f"truncated: the file ends inside chunk {name} (at byte {offset})"
            crc, left = zlib.crc32(block, crc), left - len(block)
        stored = handle.read(4)
        if len(stored) < 4:
            return f"truncated: the file ends inside chunk {name} (at byte {offset})"
        if struct.unpack(">I", stored)[0] != crc:
            return f"chunk {name} at byte {offset}: CRC mismatch (corrupted bytes)"
        if kind == b"IEND":
            return None
