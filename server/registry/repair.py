"""At start-up, fix stored built-in objects whose values their Go types refuse, written before writes checked them.

Such an object (``data: {port: 8080}`` in a ConfigMap, stored by an older kcp-virtual) breaks every typed
client listing its namespace. What its writer meant is plain for scalars in string fields (YAML wrote
``8080`` for ``"8080"``), so those are rewritten as strings (a MODIFIED event, a new resourceVersion) and
logged. Anything else is left as it is and logged with what is wrong, for an administrator to fix or
delete: guessing would change data nobody can check.
"""

from __future__ import annotations

import orjson
import structlog

from server.registry.generic import Registry, cluster_of
from server.registry.schema import typecheck
from server.storage import ConflictError, Key, KeyNotFoundError

log = structlog.get_logger("kcp.repair")


def repair_stored_types(registry: Registry) -> tuple[int, int]:
    """Check every stored object of every built-in kind with a schema; ``(repaired, left as they are)``."""
    repaired = unfixable = 0
    for rt in registry.catalog.builtin_types():
        schema = rt.structural_schema()
        if schema is None or rt.schema is not None:
            continue
        items, _ = registry.store.list(rt.storage_key, None, None)
        for stored in items:
            obj = orjson.loads(orjson.dumps(stored))  # stored objects are shared: never mutated
            changed, problems = typecheck.repair(rt.kind, schema, obj)
            if not changed and not problems:
                continue
            meta = stored["metadata"]
            where = dict(cluster=cluster_of(meta), namespace=meta.get("namespace", ""), name=meta["name"],
                         resource=rt.qualified)
            if changed:
                key = Key(rt.storage_key, cluster_of(meta), meta.get("namespace", "") if rt.namespaced else "",
                          meta["name"])
                try:
                    registry.store.update(key, obj, expected_rv=int(meta["resourceVersion"]))
                except (ConflictError, KeyNotFoundError):
                    continue  # written or deleted meanwhile, through the checked write path
                repaired += 1
                log.warning("repaired a stored object typed clients could not read", **where)
            if problems:
                unfixable += 1
                log.warning("a stored object typed clients cannot read; fix or delete it", problems=problems,
                            **where)
    return repaired, unfixable
