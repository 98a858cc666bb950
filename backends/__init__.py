"""Where sessions run: the contract (``base``: Engine, Transport, Backend), what its kinds
share (``labels``, ``flow``), and the kinds: ``docker`` (with ``docker_attach``) and
``local`` (with ``local_process`` and ``local_stream``)."""
