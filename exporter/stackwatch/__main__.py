from stackwatch.cli import main

raise SystemExit(main())
