"""``appliance admin``: the local HTTPS admin page, its own less-privileged process.

It reads the call metadata database read-only, keeps its accounts, sessions and sign-offs in
its own ``admin.sqlite``, and reaches the agent only through the control socket
(:mod:`appliance.control`): it never holds the audit keys or loads the call path or the models
(import-linter enforces that; shared/ARCHITECTURE.md, "appliance admin").

Modules: :mod:`.web` (the ASGI app), :mod:`.auth` (sessions, CSRF, the ``require`` dependency),
:mod:`.accounts` (users, Argon2id passwords, TOTP), :mod:`.rbac` (roles and permissions),
:mod:`.audit_outbox` (admin records on their way to the audit log), :mod:`.routes` (pages).
"""
