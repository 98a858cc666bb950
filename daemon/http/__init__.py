"""The HTTP layer: middlewares, the route table and OpenAPI document, the REST handlers, rate
limits. It turns requests into calls on the core and supervisors.
"""
