"""OpenSSF Model Signing (OMS), implemented with ``cryptography`` and the standard library.

The public facade is :mod:`safehub.signing`. Inside:

- ``bundle``: the Sigstore bundle JSON (media types, verification material, DSSE envelope);
- ``dsse``: the DSSE envelope and its pre-authentication encoding (PAE);
- ``keys`` and ``certs``: EC keys and certificate chains, validated at a given time;
- ``statement`` and ``manifest``: the in-toto statement and the signed list of resources;
- ``tree`` and ``hashing``: walking a model folder safely and hashing it in parallel;
- ``check``: comparing a model on disk with its signed manifest;
- ``sign``: producing a bundle that the reference ``model_signing`` tool accepts;
- ``keyless``: optional keyless Sigstore verification through ``sigstore-python``.
"""
