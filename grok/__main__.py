"""Run as: python -m grok ..."""

from grok.cli import main

main()
