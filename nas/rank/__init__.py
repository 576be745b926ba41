"""How well estimators rank: a stand-alone ground truth (``truth``) and the report that scores
estimators against it (``evaluate``).  ``python -m nas.rank --help``."""
