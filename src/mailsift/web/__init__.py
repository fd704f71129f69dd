"""The web quarantine (``webq``): a Starlette application with Jinja2 templates.

* :mod:`mailsift.web.app` — :func:`~mailsift.web.app.create_app`, security headers, static files;
* :mod:`mailsift.web.auth` — sessions, login/logout, CSRF, login throttling, who is asking;
* :mod:`mailsift.web.users` — users, their addresses and login counters in the database;
* :mod:`mailsift.web.quarantine_pages` — the quarantine pages (list, message, actions, preferences);
* :mod:`mailsift.web.templating` — the Jinja2 environment (autoescaped) shared by every page.

Other web modules add pages through ``create_app(extra_routes=...)``; their
templates extend ``base.html`` (blocks ``title`` and ``content``).
"""
