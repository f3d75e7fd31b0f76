"""Object semantics over storage, for every kind alike: kube-apiserver's generic registry.

``resourcetype`` describes a served kind (``ResourceType``) and which kinds a logical cluster serves
(``Catalog``); ``generic`` is the registry (create, update, patch, delete, list, watch with
resourceVersions, finalizers, generation, managed fields); beside it what a write goes through:
``validation`` (object meta, names), ``schema`` (structural schemas: pruning, defaulting, field
validation), ``patch``/``strategicpatch``/``apply`` (the four patch types), ``managedfields`` and
``selectors`` (label and field selectors). The kinds themselves are in ``server.apis``.
"""
