"""The HTTP layer: routes, request/response schemas, problem+json errors."""
