"""The machinery behind :mod:`safehub.enforce`.

- ``snapshot``: one sealed, private copy of a file's bytes per load.
- ``scoped_globals``: extra globals for torch's weights-only loader, for one call only.
- ``unpickler``: the policy-driven restricted unpickler for ``pickle``'s entry points.
- ``hooks``: patches that every alias of a function reaches (its ``__code__``).
- ``loaders``: the enforced ``torch.load``, ``torch.jit.load`` and ``torch.package``.
- ``hub_calls``: ``torch.hub``'s functions, decided by every active policy.
"""
