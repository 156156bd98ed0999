"""The ihs-sight command line (installed as ``ihs_sight_cli``)."""
