"""Deployment past one machine: the Ray Serve application."""
