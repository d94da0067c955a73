"""The static scanner's internals. The public face is :mod:`safehub.scan`."""
