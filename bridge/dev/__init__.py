"""Developer tools: the local Kafka launcher, the AsyncAPI generator, `send-test`, `tail`, the samples.

Never imported by what `serve` and `backfill` run (a test walks their imports to keep it so). They
ship in the same distribution because `scalekit-bridge dev`, `send-test` and `tail` are commands of
the one CLI, and the test kit (`bridge.testing`) starts the same local Kafka and sends the same
samples: a separate package would be a second version to keep in step for no gain.
"""
