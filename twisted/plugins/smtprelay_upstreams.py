# smtprelay's built-in upstream types, registered exactly as a third-party
# distribution registers its own (see docs/plugins.md).
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
