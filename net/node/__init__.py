"""One replica as a server: the production driver (``runner``), its LMDB storage, its
connections (``transport``) and the ``pxq node run`` process (``server``).
"""
