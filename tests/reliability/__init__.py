"""Reliability and security under attack (issue #16): overload, slow clients, crashes, fuzzing, a cross-tenant oracle.

Each suite runs a short variant in CI and a long one with ``KCP_RELIABILITY=long`` (``./hack/reliability``);
the figures each run measures go to ``KCP_RELIABILITY_RESULTS`` (a JSON file) when that is set.
"""
