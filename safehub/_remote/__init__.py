"""Scanning model files where they are stored, by reading byte ranges instead of files.

- ``target``: what a remote URL names (``https://``, ``hf://``, ``s3://``), the one
  function that turns it into the URL the policy decides on, and that decision.
- ``http``: range requests over HTTP(S) (stdlib), with multi-range requests where the
  server answers them and every redirect hop decided by the policy.
- ``s3``: range requests to S3-compatible stores (the ``s3`` extra: fsspec's s3fs).
- ``rangefile``: a seekable, read-only file over a range client: cached, coalesced reads,
  counted (bytes and requests).
- ``plan``: what the scanner will read from a zip, fetched up front in few requests.
- ``scan``: a URL (or a prefix, or a repository) to reports, with the bytes fetched.
"""
