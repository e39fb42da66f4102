"""The job's record in MLflow: one run per job, a metric per round, the final model registered.

Pure planning (`plan`), the durable cursor (`journal`), the MLflow calls (`backend`), the
serving wrapper of the final model (`served_model`) and the loop that keeps MLflow in step
with the aggregator's ledger (`exporter`).
"""
