"""
Managing the tenant store: the C{smtprelay-admin} command line.
"""
