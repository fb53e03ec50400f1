from harness.cli.main import build_parser, main  # noqa: F401
