# Example SLO suite. Nothing to configure: the ctxplat plugin is registered by its entry
# point and starts the embedded simulator for the session.
