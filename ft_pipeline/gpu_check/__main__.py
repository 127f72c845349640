"""`python -m ft_pipeline.gpu_check`: the GPU check (GPU_CHECK_DRY=1: the dry run on a CPU). See __init__.py."""

import sys

from ft_pipeline.gpu_check.runner import main

sys.exit(main())
