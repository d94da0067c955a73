"""Internals of the torch.hub-compatible API (:mod:`safehub.hub`)."""
