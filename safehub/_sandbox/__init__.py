"""The sandbox engine behind :mod:`safehub.sandbox`.

One concept per module:

- ``spec``: the plain values a caller hands in (layers, limits, requests).
- ``linux``, ``landlock``, ``seccomp``: ctypes bindings for the kernel interfaces.
- ``layers``: applying each isolation layer, in the order that works.
- ``channel``: the Unix-socket protocol (JSON frames plus file descriptors; never pickles).
- ``zygote``: the clean, single-threaded process that forks one sandboxed child per request.
- ``child``: what runs inside the child (import hubconf, run the operation, pack tensors).
- ``writer``: safetensors into a sealed memfd with one copy (child side).
- ``result``: checking and mapping that memfd (parent side).
- ``sharing``: modes of what the parent prepares for the sandbox to read.
- ``broker``: downloads the child asks for, served by the parent.
- ``supervisor``: the parent side of a run (deadline, kill, broker, result).
- ``errors``: the sandbox's error types.
"""
