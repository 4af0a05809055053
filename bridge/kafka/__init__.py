"""Everything that speaks Kafka, one module per role; the only package that imports aiokafka.

`options` connects, `producer` writes (and administers the topics it writes to), `scan` reads
a window for the recovery jobs, `receipts` keeps the fleet's memory of what it wrote.
"""
