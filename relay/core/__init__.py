"""
Values and protocol-independent types every part of the relay shares:
envelope addresses, replies, verdicts, what is known of a client and a
transaction, header blocks, upstream URLs, tenants as the relay sees them,
Salesforce org ids; and the small helpers they need (text for log lines,
values that may be Deferred, TLS settings, the one use of Twisted's private
transport attributes).  Nothing here knows a protocol's state or the store.
"""
