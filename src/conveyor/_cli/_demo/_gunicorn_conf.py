"""gunicorn settings for the demo's shop (the orchestrator adds ``--bind fd://N``,
``--workers`` and the app).

``preload_app``: the app module, and so its one ``conveyor.Client``, is made in the
master before it forks the workers, as most deployments do: the fork-safety case.
"""

preload_app = True
worker_class = "sync"
# Above conveyor's exit timeout (2 s): a worker told to stop has time to flush before
# the master would SIGKILL it.
graceful_timeout = 20
timeout = 30
# gunicorn 24+ opens a control socket under $HOME by default; two demos at once would
# share it (older versions ignore the setting).
control_socket_disable = True
