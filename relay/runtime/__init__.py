"""
What runs: C{twistd smtprelay}'s options and the service they build, the
C{--workers} supervisor and its worker processes, the reactor they run,
listening endpoints (inherited sockets, the PROXY protocol), the tenants in
memory, and the Redis connection shared state goes through.
"""
