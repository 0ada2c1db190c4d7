from luxc.cli import main

main()
