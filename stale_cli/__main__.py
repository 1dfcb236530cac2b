from stale_cli.cli import main

main()
