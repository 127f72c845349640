import sys

from ft_pipeline.cli.main import main

sys.exit(main())
