"""The Salesforce Pub/Sub API contract (package `eventbus.v1`), shared by kashforce's subscriber
and the sandbox's Pub/Sub server. `pubsub_api_pb2*.py` are generated from `pubsub_api.proto` by
`make proto` (grpcio-tools 1.85.1); do not edit them by hand."""
