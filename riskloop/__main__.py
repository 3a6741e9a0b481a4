"""`python -m riskloop VERB`: the `riskloop` command where the console script is not
installed (the jobs image runs the working copy it mounts)."""

from riskloop.app import main

main()
