"""
smtprelay's built-in credential checker, selected with `--auth tenants`
(the default).  Other twisted.cred checker factories work with --auth too.
"""

from relay.auth.logins import TenantCheckerFactory

tenants = TenantCheckerFactory()
