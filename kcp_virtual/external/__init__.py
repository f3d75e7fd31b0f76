"""Virtual workspaces as a process of their own (``kcp virtual-workspaces``).

``process`` is the server (the same dispatcher as in the shard, behind delegated authentication);
``delegated`` authenticates callers (client certificate, TokenReview, requestheader from the
shard's proxy certificate) and authorizes with SubjectAccessReviews; ``remote`` is the ShardClient
that reaches the shard over HTTPS; ``informer`` the watch-fed cache it answers forwarded reads from.
"""
