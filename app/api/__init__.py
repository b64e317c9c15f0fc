"""The HTTP face: the Starlette application, its routes per resource, middleware and auth."""
