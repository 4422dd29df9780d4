"""Calibration sets for INT8: real aligned crops through exactly the bundle's preprocessing."""
