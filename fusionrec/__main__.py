from fusionrec.cli.main import main

main()
