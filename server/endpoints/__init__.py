"""The Kubernetes HTTP API over the registry: what kube-apiserver's ``endpoints`` package does.

``rest`` turns a request (verb, resource, query, body) into a registry call and the answer into
JSON, protobuf or a Table, streams watches; ``openapi`` serves ``/openapi/v3``; ``protobuf`` is
kube's protobuf wire format for the built-in kinds. Discovery, negotiation, request info and Table
rendering are shared with the virtual workspaces, so they live in ``kcp_virtual.framework``.
"""
