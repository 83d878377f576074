"""Run as: python -m grok_train {align,sft,predict,merge} --config FILE.yaml [...]"""

from grok_train.cli import main

if __name__ == "__main__":
    main()
