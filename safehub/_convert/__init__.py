"""The conversion engine behind :mod:`safehub.convert`.

- ``entry``: the trusted entrypoint that loads a checkpoint inside the sandbox.
- ``sandboxed``: running it (the broker that serves the one file, the policy's limits).
- ``writers``: safetensors and ``.npz`` output, dtype rules, atomic writes.
"""
