import sys

from tools.gpu_kit import imports

imports.record()  # before anything else is imported, so every import of the kit is seen

from tools.gpu_kit.truth import main  # noqa: E402

sys.exit(main())
