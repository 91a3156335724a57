"""
smtprelay's built-in policies, registered exactly as a third-party
distribution registers its own (see docs/plugins.md).  Lower priority runs
first: cheap checks before the ones that spend a rate budget.
"""

from relay.plugin import PolicyPlugin

clientNetworks = PolicyPlugin(
    "client-networks", "relay.policy.clientnetworks.ClientNetworkPolicy",
    "AUTH only from the tenant's networks, when it lists any", 100,
)  # fmt: skip
senderDomain = PolicyPlugin(
    "sender-domain", "relay.policy.senders.SenderDomainPolicy",
    "MAIL FROM and header From in the tenant's domains", 200,
)  # fmt: skip
recipients = PolicyPlugin(
    "recipients", "relay.policy.recipients.RecipientPolicy",
    "recipient cap per message; no %, !, source-route or literal tricks", 300,
)  # fmt: skip
rateLimit = PolicyPlugin(
    "rate-limit", "relay.policy.ratelimit.RateLimitPolicy",
    "messages and recipients per period, messages in flight (memory or Redis)", 400,
)  # fmt: skip
salesforceOrg = PolicyPlugin(
    "salesforce-org", "relay.policy.salesforce.SalesforceOrgPolicy",
    "X-SFDC-LK must match the tenant's Salesforce org id", 500,
)  # fmt: skip
urlBlocklist = PolicyPlugin(
    "url-blocklist", "relay.policy.urlblocklist.URLBlocklistPolicy",
    "refuse messages linking to the tenant's blocklisted domains (streaming)", 600,
)  # fmt: skip
