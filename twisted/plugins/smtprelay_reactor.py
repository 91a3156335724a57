"""
`twistd -r smtprelay-epoll smtprelay ...`: the reactor the --workers
processes run (relay/runtime/reactor.py), for a single-process relay.
"""

from twisted.application.reactors import Reactor

smtprelayEpoll = Reactor(
    "smtprelay-epoll",
    "relay.runtime.reactor",
    "epoll, without the legacy log context around each event (smtprelay's workers)",
)
