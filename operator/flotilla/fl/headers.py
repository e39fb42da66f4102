"""The HTTP headers of Flotilla's client protocol, named once for both ends (the client's
transport and the aggregator's HTTP layer). The resume headers live with the resume
logic (resume.py)."""

# The site a client says it is, on every request once it knows; the aggregator checks it
# against the site its token names.
SITE_HEADER = "X-Flotilla-Site"
# On /v1/task: the model version the client holds (-1: none). Sending it says the client
# takes a model the task needs in the task's answer (aggregator/server.py, `_task`).
MODEL_HELD_HEADER = "X-Flotilla-Model-Held"
# The task, as JSON, of an answer to /v1/task whose body is the model.
TASK_HEADER = "X-Flotilla-Task"
