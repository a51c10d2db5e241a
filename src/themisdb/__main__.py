from themisdb.cli import main

main()
