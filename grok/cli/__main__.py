"""Run as: python -m grok.cli ..."""

from grok.cli import main

main()
