"""The decoders behind `medal.data.dicom`: which library reads which transfer syntax, and quiet failures.

pydicom decodes compressed pixel data through plugins; medal depends on these (all permissive licences), and
tests/test_dicom_codecs.py decodes a radiograph in every syntax below to prove the table:

| transfer syntax                                  | decoded by                                 |
|--------------------------------------------------|--------------------------------------------|
| uncompressed (implicit / explicit VR, big endian) | pydicom                                    |
| RLE Lossless                                     | pydicom's own RLE decoder                  |
| JPEG Baseline (process 1, 8-bit)                 | GDCM (python-gdcm), else Pillow            |
| JPEG Extended (process 2 and 4), 8-bit           | GDCM                                       |
| JPEG Extended (process 2 and 4), 12-bit          | imagecodecs (libjpeg-turbo 3), this module |
| JPEG Lossless (process 14, and its SV1)          | GDCM                                       |
| JPEG-LS Lossless and Near-Lossless                | GDCM                                       |
| JPEG 2000 (lossless and lossy), HTJ2K             | pylibjpeg-openjpeg, else GDCM              |

GDCM's wheel reads no 12-bit JPEG ("Unsupported JPEG data precision 12") and pydicom refuses to ask it; the GPL
pylibjpeg-libjpeg would, but imagecodecs (BSD) does too, so `register` adds it as a pydicom plugin for that one
syntax (`_decode_frame`, one greyscale frame: a hand radiograph).

When a plugin fails, pydicom logs the whole traceback at ERROR (and tries the next one), warns about files it
reads all the same, and the C libraries (OpenJPEG inside GDCM) print to the process's stderr; `quiet` keeps all
of it out of medal's log and hands the messages back, so the caller can say in one line what happened.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import uid

#: pydicom's plugin interface: the syntaxes this module's plugin decodes, and what it needs.
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("imagecodecs>=2024.1",)}
PLUGIN = "medal-imagecodecs"
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base")
_registered = False


def is_available(syntax: str) -> bool:
    """pydicom's plugin interface: whether this plugin can decode `syntax` here."""
    if syntax not in DECODER_DEPENDENCIES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(imagecodecs.JPEG8.available)


def _decode_frame(src: bytes, runner) -> bytes:  # noqa: ANN001 - pydicom's DecodeRunner
    """One JPEG Extended frame -> its samples as bytes, in the container `runner` expects (pydicom's interface)."""
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise NotImplementedError("medal's 12-bit JPEG plugin decodes greyscale frames only")
    frame = imagecodecs.jpeg8_decode(src)
    return frame.astype(f"<u{runner.bits_allocated // 8}").tobytes()


def register() -> None:
    """Add `_decode_frame` to pydicom's JPEG Extended decoder once (idempotent), and mute GDCM's own printing."""
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder

    global _registered
    if not _registered:
        JPEGExtended12BitDecoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
        _registered = True
    try:
        import gdcm
    except ImportError:
        return
    for switch in (gdcm.Trace.SetWarning, gdcm.Trace.SetError, gdcm.Trace.SetDebug):
        switch(False)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage().splitlines()[0] if record.getMessage() else record.levelname)


@contextmanager
def _stderr_to(sink: list[str]) -> Iterator[None]:
    """File descriptor 2 into a temporary file while inside (what C libraries print), its lines then into `sink`."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (pytest's capture): nothing at fd level
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            sink += [line for line in capture.read().decode(errors="replace").splitlines() if line.strip()]


@contextmanager
def quiet() -> Iterator[list[str]]:
    """Inside: pydicom's log records (decoder tracebacks included) and warnings are collected, not printed, and
    so is what C decoders print to stderr; yields the list of their first lines, for a one-line summary."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in _PYDICOM_LOGGERS]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught, _stderr_to(handler.messages):
            warnings.simplefilter("always")
            yield handler.messages
    finally:
        handler.messages += [str(w.message).splitlines()[0] for w in caught if str(w.message)]
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
