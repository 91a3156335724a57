"""
The policy chain and the built-in policies (client networks, sender
domains, recipients, rate limits, Salesforce org, URL blocklist).  The seam
they implement is L{relay.seams.interfaces.IPolicy}; they are registered in
C{twisted/plugins/smtprelay_policies.py} like any plugin.
"""
