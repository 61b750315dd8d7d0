"""The state machine. Imports models and its own ports; never Celery, Kafka or DRF."""
