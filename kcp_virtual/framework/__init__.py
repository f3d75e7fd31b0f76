"""The virtual workspace framework: virtual workspaces, the ``/services/`` dispatcher and the two kinds.

Read in this order: ``virtualworkspace`` (what a virtual workspace is), ``dispatcher`` (how a request
finds one), ``shardclient`` (how they reach the shard), ``resource`` + ``storage`` (the resource
kind) and ``proxy`` (the proxy kind). ``errors``, ``requestinfo``, ``discovery``, ``table``,
``negotiation`` and ``watchstream`` are the Kubernetes API machinery the shard shares with them.
This package never imports ``server``. Plugins use the stable subset ``kcp_virtual`` exports, not these modules;
``plugins`` is how installed virtual workspaces are found.
"""
