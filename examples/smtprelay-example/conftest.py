# Lets pytest import smtprelay_example from this checkout without installing it.
