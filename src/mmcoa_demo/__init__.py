"""The offline demo, an application of the ``mmcoa`` library (``make demo``, ``mmcoa demo``).

It lives beside the library, not in it: it uses only the library's public API, and the library
imports it only for the ``mmcoa demo`` command. :mod:`mmcoa_demo.demo` runs the pipeline,
:mod:`mmcoa_demo.pretrain` is its step 1 (the zero-shot model's own training loop) and
:mod:`mmcoa_demo.summary` renders the README's demo block from the run's files.
"""
