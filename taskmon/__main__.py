from taskmon.cli import main

main()
