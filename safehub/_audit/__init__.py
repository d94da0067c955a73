"""The audit engine behind :mod:`safehub.audit`.

One concept per module:

- ``model``: the plain values discovery produces (targets, expectations, provenance).
- ``locations``: where torch's and Hugging Face's caches are by default.
- ``torch_layout``: torch.hub's directory (repo folders, ``checkpoints/``, ``trusted_list``)
  and safehub's own cache inside it (records of every download and checkout).
- ``hf_layout``: the Hugging Face hub cache (``blobs``, ``snapshots``, ``refs``).
- ``plain``: any other folder or file.
- ``discover``: which layout a root has, and the targets it holds.
- ``lockfile``: digests a ``safehub.lock`` pins, looked up by URL and file name.
- ``state``: the incremental state file (stat keys, digests, scan results).
- ``work``: one file: open once, hash what an integrity check needs, scan.
- ``runner``: the files in parallel across processes, reusing unchanged results.
- ``integrity``: digests against what was recorded or pinned.
- ``compliance``: repositories and files against the policy (trust, pins, signatures).
- ``report``: the audit report and its renderings (text, JSON, SARIF).
- ``quarantine``: ``--fix``: convert, move originals aside, record what was done.
- ``engine``: everything above, in order.
"""
