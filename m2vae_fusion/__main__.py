import sys

from m2vae_fusion.cli import main

sys.exit(main())
