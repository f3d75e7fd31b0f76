"""Every test can ask for a real shard (``kcp_shard``, ``kcp_shard_module``) from the public harness."""

pytest_plugins = ["server.testing"]
