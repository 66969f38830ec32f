"""One module per `fer-ray` subcommand: HELP, add_arguments(parser), run(args) -> exit code."""
