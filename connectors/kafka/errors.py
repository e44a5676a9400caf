"""Errors a Kafka read or write fails with (as opposed to bad records, which are dead letters)."""

__all__ = ["BrokerUnavailableError", "KafkaSecurityError", "PartitionResetError"]


class KafkaSecurityError(RuntimeError):
    """A broker refused the client's SASL credentials, or its TLS certificate was not trusted."""


class BrokerUnavailableError(RuntimeError):
    """No broker answered within the configured deadline."""


class PartitionResetError(RuntimeError):
    """A partition's log no longer holds the reader's position (topic recreated or truncated)."""
