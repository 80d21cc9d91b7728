"""PyInstaller runtime hook of the lean bundle: load PyTorch and the model libraries from the
private environment that installer/bootstrap.py created (or MEND_ENV), appended after the
bundle's own modules. Without one, Mend runs its built-in (no-download) tier only.

MEND_NO_ENV=1 skips it. The outcome is left in MEND_RUNTIME_ENV (the site-packages used) or
MEND_RUNTIME_ENV_ERROR (why none was used) for `mend doctor` and bug reports.
"""


def _mend_use_private_env() -> None:
    import os
    import sys

    if os.environ.get("MEND_NO_ENV") == "1":
        os.environ["MEND_RUNTIME_ENV_ERROR"] = "MEND_NO_ENV=1"
        return
    try:
        import bootstrap  # installer/bootstrap.py, bundled: stdlib only
    except Exception as e:  # noqa: BLE001 (a broken bundle must still start)
        os.environ["MEND_RUNTIME_ENV_ERROR"] = f"bootstrap module missing: {e}"
        return
    sp, why = bootstrap.find_env_site_packages()
    if sp is None:
        os.environ["MEND_RUNTIME_ENV_ERROR"] = why
        return
    # Appended, and without running its .pth files: the bundle's own modules (Mend, numpy,
    # Qt, ...) always win; only what the bundle leaves out (torch & co) comes from there.
    sys.path.append(str(sp))
    os.environ["MEND_RUNTIME_ENV"] = str(sp)


_mend_use_private_env()
