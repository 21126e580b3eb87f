"""Vashista's application layer: the ``vashista`` console script and what it runs.

    cli            the dispatcher (``vashista <command>``), with one-line "install the extra" errors
    cmd_certify    ``vashista certify`` (a projection and its KKT certificate)
    cmd_decode     ``vashista certify --decode`` (one sparse paged decode step and its certificate)
    repro          ``vashista repro`` (the paper's tables and figures)
    quality        ``vashista quality`` (dense vs Vashista decode on the embedded model)
    notebook_baseline   the paper notebook's decode step, the baseline the benchmarks time
    timing         the one timing harness (repro and benchmarks/)

It may import every Vashista package; no library package imports it (tests/test_import_rules.py).
"""
