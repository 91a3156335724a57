"""
The inbound side: the SMTP server protocol our clients talk to, and the
session logic that relays what they send.
"""
