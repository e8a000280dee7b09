"""Offline experiments: batches of swaps from a jobs file, parameter sweeps, their outputs and contact sheets."""
