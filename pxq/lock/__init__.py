"""The lock service: its client API (``messages``), replicated commands and state machine
(``commands``, ``sm``), the replica node (``node``), and the client-side call helper
(``client``)."""
