"""The gunicorn configuration under test: four sync (prefork) workers, app preloaded.

The harness adds ``--bind fd://N`` (a listening socket it made) and the log file.
"""

preload_app = True
workers = 4
worker_class = "sync"
graceful_timeout = 20
# gunicorn 24+ opens a control socket under $HOME by default: two servers at once would
# share it. (Older versions ignore the unknown setting.)
control_socket_disable = True
