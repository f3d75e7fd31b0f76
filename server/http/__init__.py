"""The shard's first floor: bytes on the wire.

``serving`` is the TLS server (gevent.pywsgi with a lean request head parser and raw intercepts);
``serving_h2`` its HTTP/2 side (only the external virtual-workspace process offers it); ``parking``
holds idle streams without a greenlet; ``forwarding`` relays ``/services/*`` to an external
virtual-workspace process; ``logs`` (one structured line per request) and ``metrics`` (Prometheus)
wrap every request. Nothing here knows Kubernetes objects.
"""
