"""The ``syncer`` virtual workspace (DESIGN.md section 4): each sync target's share of the workloads, transformed.

Read in this order: ``virtualworkspace`` (URL, authorizer, UID check, the factory), ``placement`` (target keys
and the labels and annotations that carry them), ``transformation`` (one target's view of an object and what its
syncer's writes do), ``splitter`` and ``specdiff`` (the spec transformations), ``summary`` (the upstream status
the shard's controller computes from every target's report).
"""

from kcp_virtual.syncer.virtualworkspace import NAME, syncer, url_path

__all__ = ["NAME", "syncer", "url_path"]
