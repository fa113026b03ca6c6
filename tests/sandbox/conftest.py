from tests.fixtures_sandbox import sandbox, sandbox_server  # noqa: F401 (fixtures)
