"""A fake web on loopback, for the tests, the benchmarks and the demo (never shipped in the image).

- :mod:`.server`: the misbehaving image server (in-process, one thread with its own loop).
- :mod:`.process`: the same server in a child process (``python -m dataset_assets_tests.fakeweb.process``).
- :mod:`.images`: generated image corpora (web-like JPEGs, PNGs, sizes and qualities).
"""
