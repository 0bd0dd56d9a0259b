"""Demo drivers (`make demo*`) and the support desk's data generators; no package imports them
(the tests and `bench/serving.py` do)."""
