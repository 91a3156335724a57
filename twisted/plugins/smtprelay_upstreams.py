"""
smtprelay's built-in upstream types, registered exactly as a third-party
distribution registers its own (see docs/plugins.md).
"""

from relay.plugin import UpstreamTypePlugin

smtp = UpstreamTypePlugin(
    "smtp",
    ("smtp", "smtp+starttls", "smtps"),
    "relay.upstreams.smtp.SMTPUpstreamType",
    "SMTP relay host: STARTTLS when offered (smtp), required (smtp+starttls) or implicit TLS (smtps)",
)
maildir = UpstreamTypePlugin(
    "maildir",
    ("maildir",),
    "relay.upstreams.maildir.MaildirUpstreamType",
    "Local Maildir delivery (atomic tmp -> new, fsync before 250)",
)
lmtp = UpstreamTypePlugin(
    "lmtp",
    ("lmtp", "lmtp+unix"),
    "relay.upstreams.lmtp.LMTPUpstreamType",
    "LMTP delivery agent (RFC 2033) over TCP (STARTTLS when offered) or a local socket; one reply per recipient",
)
webhook = UpstreamTypePlugin(
    "webhook",
    ("https", "http"),
    "relay.upstreams.webhook.WebhookUpstreamType",
    "HTTP(S) webhook: each message POSTed as message/rfc822, streamed with chunked encoding",
)
