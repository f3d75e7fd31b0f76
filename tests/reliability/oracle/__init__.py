"""The cross-tenant oracle (issue #16): a randomized world of tenants, callers and grants, an independent model
of what each caller may see and do, and views -- one module per server path (the shard, each virtual
workspace) -- whose probes are compared with every answer. See ``test_oracle.py``.
"""
