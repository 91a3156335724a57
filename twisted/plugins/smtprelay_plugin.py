"""
The `twistd smtprelay` command.  Nothing of smtprelay is imported here:
ServiceMaker loads relay.runtime.tap only when the command is used.
"""

from twisted.application.service import ServiceMaker

smtprelay = ServiceMaker(
    "smtprelay",
    "relay.runtime.tap",
    "Multi-tenant SMTP relay streaming each message into the tenant's upstream",
    "smtprelay",
)
