from medal.cli import main

main()
