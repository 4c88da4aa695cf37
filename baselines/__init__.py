"""Baseline policies for FedLoRAWireless-v0 and the comparison harness."""

from baselines.policy import Policy

__all__ = ["Policy"]
