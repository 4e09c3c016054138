"""A seeded, mutation-based fuzzer of slideseg's inputs.

:mod:`.seeds` builds one small valid input of every format (and masks, and training pairs),
:mod:`.mutators` derives broken variants from them (bytes, truncation, TIFF tags, OME-XML and
ImageDescription text, Zarr JSON and chunks, PNG/JPEG headers, mask values), and :mod:`.runner`
runs each variant through the CLI in a child process with a time and memory limit, classifying
the outcome as a result, a clean error (exit 2, one ``slideseg:`` line), a crash (a traceback), a
hang or a memory blow-up. ``tests/fuzz/test_fuzz_fast.py`` runs a few hundred cases in the test
suite; ``benchmarks/fuzz_inputs.py`` runs as many as asked and prints the summary table.
"""
