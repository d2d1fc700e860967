"""``pxq deploy``: a cluster on many hosts over SSH (issue 15).

* ``ssh``: logging into a ``[[hosts]]`` entry with verified host keys, running commands with
  a bound, copying and writing files (secrets 0600, never on a command line);
* ``check``: what each host must offer before a deployment (Python, disk, free ports, clock);
* ``install``: a wheelhouse built here, a virtual environment per host installed from it alone;
* ``watchdog`` and ``agent``: what runs on the hosts (the node's supervisor, and the small
  commands ``up``/``down``/``status`` run there through the installed environment);
* ``remote``: ``up``/``down``/``status``/``restart``/``logs``/``destroy`` from this machine;
* ``upgrade``: the rolling upgrade, one replica at a time, each caught up before the next.

docs/deployment.md is the user's guide.
"""
