"""The policy engine's internals. The public face is :mod:`safehub.policy`."""
