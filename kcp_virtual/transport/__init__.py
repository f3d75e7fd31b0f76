"""HTTP clients shared by the shard's forwarder and the external virtual-workspace process.

``http1`` is a lean keep-alive HTTP/1.1 client over TLS, ``http2`` an HTTP/2 client for many watches
on one connection, ``httpclient`` the header policy of a forwarder (hop-by-hop and identity headers)
and the streaming of a response into a client. Nothing here knows virtual workspaces.
"""
