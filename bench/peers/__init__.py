"""The servers `bench/openloop.py` measures the bridge against, on the same Kafka and workload."""
