"""Every test can ask for a real shard (``kcp_shard``, ``kcp_shard_module``) from the public harness, for the
demo virtual workspaces installed as plugins (``demo_plugins``), and for a real Registry over SQLite in tmp_path
with the root logical cluster (``registry``)."""

import pytest

pytest_plugins = ["server.testing"]


@pytest.fixture(scope="session")
def demo_plugins():
    """tests/demo_plugin installed (not into the venv) for the session: ``demo``, ``demo-view``, ``demo-proxy``
    are then found by entry point, in-process and by ``kcp virtual-workspaces`` subprocesses."""
    from server.testing import installed_plugins  # here: pytest must import server.testing first, as a plugin
    from tests.vw_demo import DEMO_PLUGIN_PROJECT

    with installed_plugins(DEMO_PLUGIN_PROJECT) as target:
        yield target


@pytest.fixture
def registry(tmp_path):
    """A Registry of the built-in types over SQLite in ``tmp_path``, with the root logical cluster."""
    from server.apis import builtin_types
    from server.registry.generic import Registry
    from server.registry.resourcetype import Catalog
    from server.storage import SQLiteBackend, Store

    store = Store(SQLiteBackend(str(tmp_path / "kcp.db")))
    registry = Registry(store, Catalog(builtin_types()))
    registry.ensure_logical_cluster("root")
    yield registry
    store.close()
