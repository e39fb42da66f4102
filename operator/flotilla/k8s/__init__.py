"""Flotilla on Kubernetes: the CRD, the desired objects of a job, its status, the operator."""
