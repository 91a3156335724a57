"""
The plugin seams: the interfaces plugins implement (upstream types,
policies), what the relay hands them (contexts, errors, the policy base
class), how they are registered without being imported, and how the relay
discovers them and checks that they conform.  Plugin authors import all of
it from L{relay.plugin}.
"""
