"""``python -m htmengine.cli``: the same as the ``htmengine`` console script."""

from htmengine.cli import main

main()
