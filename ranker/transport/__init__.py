"""The gRPC transport: status table, message conversions, servicer and server lifecycle.

Import the modules themselves; this package imports nothing, so a CLI client can use
`ranker.transport.convert` without loading the server (or the pipeline behind it).
"""
