"""Real-AD lab: harness (lab.py, labsvc.py, dctool.py, sigv4.py) and its tests."""
