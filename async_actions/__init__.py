"""Long-running work in Django as persistent, observable actions."""

__version__ = "0.1.0.dev0"


def startup() -> None:
    """Start this process's action machinery: the runner, and recovery with a sweep at once.

    Call it once in every process that serves or works, after Django is set up: at the
    end of your ``asgi.py`` (servers, and ``runserver`` with daphne, import it as they
    start); ``manage.py async_actions_worker`` calls it for a django-tasks-db worker.
    Nothing else starts a thread or installs a signal handler, so ``check``, ``migrate``
    and other commands have no side effects. Calling it again does nothing.
    """
    from async_actions import push  # the package __init__ imports nothing at import time
    from async_actions.runners import get_runner  # needs the app registry: not at import

    # Inside the server's loop (an ASGI lifespan hook) this names it to the transport; at
    # the end of asgi.py no loop runs yet and the hub names it as the first tab connects.
    push.attach_loop()
    get_runner().start()
