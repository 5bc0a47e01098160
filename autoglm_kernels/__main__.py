from autoglm_kernels.cli import main

raise SystemExit(main())
