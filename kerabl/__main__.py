from kerabl.cli import main

main()
