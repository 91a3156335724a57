"""An example smtprelay plugin distribution."""
