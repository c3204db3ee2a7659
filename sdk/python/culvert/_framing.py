"""Frames of proto/SPEC.md section 3: a varint length, then a body that
starts with a two-byte envelope tag (0x82..0xFA in steps of 8, then 0x01)."""

import os

#: The frame size limit until the handshake says otherwise (4 MiB).
DEFAULT_MAX_FRAME = 4 << 20


class ProtocolError(Exception):
    """The host broke the framed protocol; the function must exit."""


def read_frame(f, max_bytes=DEFAULT_MAX_FRAME):
    """Return the next frame body from binary stream f, or None at a clean EOF.

    The length is checked against max_bytes before the body is read, and the
    tag before the rest of the body.
    """
    n = 0
    for i in range(5):
        b = f.read(1)
        if not b:
            if i == 0:
                return None
            raise ProtocolError("the input ended inside a frame length")
        n |= (b[0] & 0x7F) << (7 * i)
        if b[0] < 0x80:
            break
    else:
        raise ProtocolError("frame length is longer than 5 bytes")
    if not 2 <= n <= max_bytes:
        raise ProtocolError(f"frame length {n} is out of range [2, {max_bytes}]")
    head = f.read(2)
    if len(head) != 2:
        raise ProtocolError("the input ended inside a frame")
    if head[0] < 0x82 or head[0] > 0xFA or (head[0] - 0x82) % 8 or head[1] != 0x01:
        raise ProtocolError(f"not a culvert.v1 frame: body starts {head.hex(' ')}")
    rest = f.read(n - 2)
    if len(rest) != n - 2:
        raise ProtocolError("the input ended inside a frame")
    return head + rest


def encode_length(n):
    """The varint of n, as bytes."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_frame(fd, body):
    """Write body as one frame to raw file descriptor fd, looping on short writes."""
    data = memoryview(encode_length(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]
