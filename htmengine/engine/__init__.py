"""The engine tier: what the services and the datasource adapter share about metrics and models.

``lifecycle`` makes every metric status transition, ``model_input`` hands stored rows to models,
``swarm_params`` builds a scalar metric's model definition. ``runtime`` (the services) and
``adapters`` import this package; it imports only the model swapper's interface, the repository
and the pure HTM parameters below it.
"""
