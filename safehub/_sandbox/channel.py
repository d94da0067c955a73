"""The wire protocol: length-prefixed JSON frames over a Unix stream socket, with
file descriptors passed by SCM_RIGHTS alongside a frame's first bytes.

Nothing crosses as a pickle in either direction. Every frame is a JSON object with
a string ``"t"`` (its type). The receiver bounds the frame size and the number of
descriptors, and closes descriptors that arrive anywhere but with a frame header;
a peer that breaks these rules gets a :class:`ProtocolError`, never a crash.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Channel", "ChannelClosed", "ProtocolError"]

_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame."""


class ChannelClosed(Exception):
    """The peer closed the channel (or died)."""


class Channel:
    """One end of a framed channel over a connected ``AF_UNIX`` stream socket."""

    def __init__(self, sock: socket.socket, *, max_frame: int = 16 << 20, max_fds: int = 4):
        self.sock = sock
        self.max_frame = max_frame
        self.max_fds = max_fds

    @classmethod
    def from_fd(cls, fd: int, **kwargs: int) -> Channel:
        """Wrap an inherited descriptor (it is owned by the channel from then on)."""
        return cls(socket.socket(fileno=fd), **kwargs)

    def fileno(self) -> int:
        """The socket's descriptor, for select/poll."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send one frame, with ``fds`` attached to its first bytes."""
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        if len(payload) > self.max_frame:
            raise ProtocolError(f"frame of {len(payload)} bytes exceeds {self.max_frame}")
        data = _HEADER.pack(len(payload)) + payload
        try:
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self.sock.sendmsg([data], ancillary)
            else:
                sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(str(exc)) from None

    def recv(self, deadline: float | None = None) -> tuple[dict[str, Any], list[int]]:
        """Receive one frame and its descriptors (the caller owns them).

        ``deadline`` is a ``time.monotonic()`` value; past it, TimeoutError.
        """
        fds: list[int] = []
        try:
            header = self._read(_HEADER.size, deadline, fds, allow_fds=True)
            (size,) = _HEADER.unpack(header)
            if size > self.max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the {self.max_frame} limit")
            payload = self._read(size, deadline, fds, allow_fds=False)
            try:
                message = json.loads(payload)
            except (ValueError, RecursionError) as exc:
                raise ProtocolError(f"frame is not valid JSON ({exc})") from None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise ProtocolError("frame is not a JSON object with a string 't'")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return message, fds

    def _wait(self, deadline: float | None) -> None:
        if deadline is None:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            raise TimeoutError("no message before the deadline")

    def _read(self, n: int, deadline: float | None, fds: list[int], *, allow_fds: bool) -> bytes:
        chunks: list[bytes] = []
        got = 0
        space = socket.CMSG_SPACE(self.max_fds * array.array("i").itemsize)
        while got < n:
            self._wait(deadline)
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(min(n - got, 1 << 20), space,
                                                            socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError as exc:
                raise ChannelClosed(str(exc)) from None
            received = _collect_fds(ancdata)
            fds.extend(received)
            if received and not (allow_fds and got == 0):
                raise ProtocolError("descriptors sent outside a frame header")
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError(f"more than {self.max_fds} descriptors in one frame")
            if not data:
                raise ChannelClosed("peer closed the channel")
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)


def _collect_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds
