"""Internals of the fetch stage (the public facade is :mod:`safehub.fetch`).

One concept per module:

- ``location``: where torch's hub directory is (``get_dir``/``set_dir`` rules).
- ``http``: an HTTP client with timeouts, retries, size caps, Range resume and
  redirects re-checked on every hop.
- ``credentials``: which token may be sent to which origin.
- ``hops``: which URLs a request may reach (the policy's allowlist, per hop).
- ``locks``: per-entry inter-process locks (``fcntl.flock``).
- ``cache``: the on-disk layout under ``<hub_dir>/safehub`` and its metadata records.
- ``archive``: validating and extracting repo archives (zip and tar).
- ``github``: ``owner/repo[:ref]`` to a commit through a GitHub-compatible REST API.
- ``repos``: the commit-keyed checkout cache (download, extract, install, verify).
- ``weights``: the URL-keyed file cache (download, verify, install).
- ``lockfile``: ``safehub.lock``.
"""
