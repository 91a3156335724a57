# Registrations only: the implementations are named, not imported, so that
# twistd stays fast and robust while it rebuilds its plugin cache.
from relay.plugin import PolicyPlugin, UpstreamTypePlugin

pipe = UpstreamTypePlugin(
    "pipe",
    ("pipe",),
    "smtprelay_example.pipe.PipeUpstreamType",
    "Stream each message into a program's standard input",
)
subjectFilter = PolicyPlugin(
    "subject-filter",
    "smtprelay_example.subjects.SubjectFilterPolicy",
    "Refuse [BLOCK] subjects, tempfail [LATER] ones",
    priority=700,
)
