"""
A plugin written by a new plugin author from docs/plugins.md alone (an
upstream type and a policy), kept as it was written: tests/test_plugin_guide.py
shows that what the guide promises holds for it.
"""
