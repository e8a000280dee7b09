"""The HTTP room: app factory, v1 and v2 routes, health, playground, contract models, docs, body parsing."""
