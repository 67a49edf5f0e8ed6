from imgwatch.cli import main

raise SystemExit(main())
