"""
Credential checkers: C{twisted.cred} checkers whose avatar ID is the name of
the tenant the credentials act for.
"""
