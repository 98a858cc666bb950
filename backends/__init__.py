"""Where sessions run: the Backend contract (``base``) and its implementations (``docker``)."""
