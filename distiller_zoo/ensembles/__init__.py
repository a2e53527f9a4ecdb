"""Multi-teacher ensemble strategies (``--ensemble_method``), one file each."""
