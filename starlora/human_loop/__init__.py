"""The human loop: a project folder labeled round after round (project.py: init, query, label, train, status), the
files handed out and read back (labelstudio.py: JSON lines, CSV, Label Studio), and `starlora serve`'s web page over
the same folder (serve.py: what the page shows, background jobs, the socket; server.py: the HTTP routes; web/).

It imports nothing from the simulation (experiment.py): both loops run rounds.Round, and provenance.versions records
what made a project."""
