"""Asynchronous buffered aggregation (FedBuff): staleness weights and the buffer's arithmetic."""
