"""`python -m tuneforge ...` runs the same CLI as the `tuneforge` script."""
from tuneforge.cli.main import main

if __name__ == "__main__":
    main()
