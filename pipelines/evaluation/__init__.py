"""`segswap eval`: a fixed suite of real photographs through an engine, weight-free measures, a contact sheet."""
