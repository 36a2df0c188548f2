from celeriac.cli import main

main()
