"""The core API: what objectives, tasks and training sets are written against. It imports nothing
else of the project."""
