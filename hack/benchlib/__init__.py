"""hack/bench: side-by-side performance measurements of the shard (see hack/bench --help).

Modules:
  util       ports, CPU pinning, RSS, wrk, percentiles
  services   the things measured: our shard, the trivial pywsgi floor, the nginx ceiling
  trivial    the trivial gevent.pywsgi + werkzeug server (run as a subprocess)
  client     the load/watch client process (gevent, raw TLS sockets; run as a subprocess)
  scenarios  the registry of scenarios; add rows here
  report     table + JSON output
"""
