"""`ray job submit --working-dir . -- python jobs/evaluate.py ...`: the same flags as `fer-ray evaluate`."""

import os
import sys

# Under `ray job submit` the package arrives in the working dir, not installed: import it from there.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_ray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    job_main("evaluate")
