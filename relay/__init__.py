"""smtprelay: a multi-tenant SMTP relay that streams each message into the tenant's upstream."""

__version__ = "0.1.0"
