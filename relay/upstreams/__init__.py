"""
The built-in upstream types (SMTP, LMTP, webhook, Maildir), our SMTP client
and the pool that opens and reuses upstream sessions.  The seam they
implement is L{relay.seams.interfaces.IUpstreamType}; they are registered
in C{twisted/plugins/smtprelay_upstreams.py} like any plugin.
"""
