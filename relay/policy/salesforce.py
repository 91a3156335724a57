"""
Salesforce org: mail from a tenant with a Salesforce organisation id must
carry that id in C{X-SFDC-LK}, which Salesforce's Email Relay adds to every
message it sends.  Ids are compared on their first 15 characters, case
sensitively (the 18-character form only adds a case checksum).
"""

from __future__ import annotations

from relay.plugin import CONTINUE, Policy, reject

__all__ = ["SalesforceOrgPolicy"]


class SalesforceOrgPolicy(Policy):
    """X-SFDC-LK must carry the tenant's Salesforce org id."""

    def headers(self, client, transaction, headers):
        orgId = client.tenant.orgId
        if orgId is None:
            return CONTINUE
        values = headers.get("X-SFDC-LK")
        if len(values) != 1:
            return reject(550, "5.7.1", "Message must carry exactly one X-SFDC-LK header for this tenant")
        if values[0].strip()[:15] != orgId[:15]:
            return reject(550, "5.7.1", "X-SFDC-LK does not match this tenant's Salesforce org")
        return CONTINUE
